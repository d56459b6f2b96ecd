"""`dcs bench scale`: rows for each contender and process count, a "does not fit" row instead of a crash."""

import json

import pytest
from typer.testing import CliRunner

from dcs_cli.bench import scale
from dcs_cli.cli.app import app

runner = CliRunner()


@pytest.mark.slow
def test_scale_tiny_run_writes_rows(tmp_path):
    out = tmp_path / "scale.json"
    result = runner.invoke(app, ["bench", "scale", "--classes", "3000", "--dim", "16", "--batch", "8",
                                 "--sample-num", "200", "--steps", "2", "--full-steps", "1", "--index-dim", "8",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["scenario"] == "scale"
    got = {(r["mode"], r["procs"]) for r in data["rows"]}
    assert got == {(m, p) for m in ("full", "random", "hf") for p in (1, 2)}
    for row in data["rows"]:
        assert row["note"] == "", row
        assert row["samples_per_s"] > 0 and row["classes"] == 3000
        per_proc = row["peak_rss_mb_per_proc"]
        assert len(per_proc) == row["procs"] and abs(row["peak_rss_mb"] - sum(per_proc)) <= row["procs"]
        assert set(row) >= {"name", "mode", "classes", "procs", "samples_per_s", "peak_rss_mb"}


def test_a_configuration_that_cannot_fit_is_a_row(monkeypatch):
    monkeypatch.setattr(scale, "mem_available", lambda: 1 << 30)
    params = {"dim": 128, "batch": 128, "sample_num": 10_000, "steps": 1, "full_steps": 1, "ntrees": 4,
              "index_dim": 32, "rerank": 4, "momentum_dtype": "float32", "threads": 1}
    row = scale.run_config("full", 10_000_000, 2, params)  # no process is started
    assert row["samples_per_s"] is None and row["peak_rss_mb"] is None
    assert row["note"].startswith("does not fit: needs ~") and row["estimated_mb"] > 1024
    # every key a run's row has, so the JSON rows agree and the table keeps its columns
    assert set(row) == {"name", "mode", "classes", "procs", "estimated_mb", "samples_per_s", "active", "step_s",
                        "peak_rss_mb", "peak_rss_mb_per_proc", "init_s", "build_s", "note"}


def test_the_table_shows_every_rows_columns(capsys):
    from dcs_cli.console import print_table

    print_table("t", [{"name": "skipped", "note": "does not fit"},
                      {"name": "ran", "note": "", "step_s": 0.25, "per_proc": [1, 2]}])
    shown = capsys.readouterr().out
    assert "step_s" in shown and "0.25" in shown and "per_proc" not in shown  # lists stay in the JSON


def test_a_worker_that_dies_without_reporting_is_named_not_waited_for():
    import multiprocessing as mp

    from dcs_cli.bench.common import WorkerDied, collect

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    worker = ctx.Process(target=_die)  # as the OOM killer or a native crash would end it
    worker.start()
    with pytest.raises(WorkerDied, match=r"ended without its figures \(exit codes \[137\]"):
        collect(results, [worker], 1)
    worker.join()


def _die():
    import os

    os._exit(137)


def test_estimates_grow_with_classes_and_shrink_with_bf16_momentum():
    p = {"dim": 128, "batch": 128, "index_dim": 32, "momentum_dtype": "float32"}
    assert scale.estimate_bytes("hf", 10_000_000, 2, p) > scale.estimate_bytes("hf", 1_000_000, 2, p)
    half = scale.estimate_bytes("hf", 10_000_000, 2, {**p, "momentum_dtype": "bfloat16"})
    assert half < scale.estimate_bytes("hf", 10_000_000, 2, p)


def test_scale_bad_options():
    result = runner.invoke(app, ["bench", "scale", "--only", "hnsw"])
    assert result.exit_code != 0 and "--only" in result.output
    result = runner.invoke(app, ["bench", "scale", "--momentum-dtype", "float16"])
    assert result.exit_code != 0 and "--momentum-dtype" in result.output
