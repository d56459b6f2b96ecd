import json

import pytest

from dcs_cli.cli.app import app
from dcs_cli.cpus import available_cpus, format_cpu_list
from dcs_cli.paramserver import shm


@pytest.mark.slow
def test_bench_paramserver_tiny(runner, tmp_path):
    out = tmp_path / "ps.json"
    result = runner.invoke(
        app,
        [
            "bench",
            "paramserver",
            "--classes",
            "500",
            "--dim",
            "8",
            "--rows",
            "50",
            "--steps",
            "4",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["scenario"] == "paramserver" and data["params"]["classes"] == 500
    placements = ["any"]
    if len(available_cpus()) >= 2:  # the server also runs on a core of its own, clients on the others
        cores = sorted(available_cpus())
        placements.append(f"server {cores[0]}, clients {format_cpu_list(cores[1:])}")
    expected = [
        ("in-process LocalStore", "in process", 1, "any"),
        ("in-process LocalStore, get only", "in process", 1, "any"),
    ]
    transports = ["tcp", "shared memory"] if shm.available() else ["tcp"]
    for where in placements:
        for transport in transports:
            expected += [
                ("paramserver", transport, 1, where),
                ("paramserver, get only", transport, 1, where),
                ("paramserver", transport, 2, where),
            ]
    assert [(r["name"], r["transport"], r["clients"], r["placement"]) for r in data["rows"]] == expected
    for row in data["rows"]:
        assert row["rows_per_s"] > 0 and row["p99_step_ms"] >= row["p50_step_ms"] > 0


@pytest.mark.parametrize("flag,value", [("--warmup", "-1"), ("--threads", "0")])
def test_bench_paramserver_refuses_bad_warmup_and_threads(runner, flag, value):
    result = runner.invoke(app, ["bench", "paramserver", "--classes", "10", "--dim", "2", "--rows", "2",
                                 "--steps", "1", flag, value])
    assert result.exit_code == 2 and "need --warmup >= 0 and --threads >= 1" in result.output
    assert "Traceback" not in result.output
