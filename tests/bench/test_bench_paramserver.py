import json

import pytest

from dcs_cli.cli.app import app


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
    assert [(r["name"], r["clients"]) for r in data["rows"]] == [
        ("in-process LocalStore", 1),
        ("in-process LocalStore, get only", 1),
        ("paramserver", 1),
        ("paramserver, get only", 1),
        ("paramserver", 2),
    ]
    for row in data["rows"]:
        assert row["rows_per_s"] > 0 and row["p99_step_ms"] >= row["p50_step_ms"] > 0
