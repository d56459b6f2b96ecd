import json

import pytest

from dcs_cli.cli.app import app
from dcs_cli.cpus import available_cpus, format_cpu_list


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
    expected = [("in-process LocalStore", 1, "any"), ("in-process LocalStore, get only", 1, "any")]
    for where in placements:
        expected += [("paramserver", 1, where), ("paramserver, get only", 1, where), ("paramserver", 2, where)]
    assert [(r["name"], r["clients"], r["placement"]) for r in data["rows"]] == expected
    for row in data["rows"]:
        assert row["rows_per_s"] > 0 and row["p99_step_ms"] >= row["p50_step_ms"] > 0
