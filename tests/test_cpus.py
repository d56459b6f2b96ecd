import os
from pathlib import Path

import pytest

from dcs_cli.cli.app import app
from dcs_cli.cpus import available_cpus, format_cpu_list, parse_cpu_list, pin_to_cpus
from dcs_cli.errors import ConfigError


def test_parse_and_format_round_trip():
    assert parse_cpu_list("0") == [0]
    assert parse_cpu_list("3,0-1, 7") == [0, 1, 3, 7]
    assert format_cpu_list([7, 0, 1, 3, 2]) == "0-3,7"
    assert format_cpu_list(parse_cpu_list("0-2,5,9-10")) == "0-2,5,9-10"


@pytest.mark.parametrize("bad", ["", "a", "1-", "3-1", "-2", "0,,x"])
def test_bad_core_lists_name_the_option(bad):
    with pytest.raises(ConfigError, match="--cpus"):
        parse_cpu_list(bad)


def test_pinning_to_an_unavailable_core_is_refused():
    missing = max(available_cpus()) + 1
    with pytest.raises(ConfigError, match=r"paramserver.cpus: core \d+ is not available"):
        pin_to_cpus([missing], key="paramserver.cpus")


def test_cli_rejects_a_bad_core_list_in_one_line(runner):
    result = runner.invoke(app, ["paramserver", "--cpus", "zero"])
    assert result.exit_code == 2
    assert "--cpus 'zero' is not a core list" in result.output and "Traceback" not in result.output
    missing = str(max(available_cpus()) + 1)
    result = runner.invoke(app, ["paramserver", "--bind", "tcp://127.0.0.1:*", "--cpus", missing])
    assert result.exit_code == 2 and f"paramserver.cpus: core {missing} is not available" in result.output


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_server_process_runs_on_the_given_core():
    from dcs_cli.paramserver.launcher import start_background

    core = min(available_cpus())
    with start_background("tcp://127.0.0.1:*", cpus=[core], torch_threads=4) as server:
        status = Path(f"/proc/{server.pid}/status").read_text()
        allowed = next(line.split(":", 1)[1].strip() for line in status.splitlines()
                       if line.startswith("Cpus_allowed_list"))
        assert allowed == str(core)
        log = server.log()
        assert f"pinned to cores {core}" in log
        assert "torch_threads=4 > 1 pinned core(s); using 1 threads" in log  # never oversubscribed
