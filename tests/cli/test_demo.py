import json

import numpy as np
import pytest

from dcs_cli.cli.app import app


def test_demo_runs_the_whole_pipeline(runner, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--identities", "24", "--images-per-identity", "4", "--epochs", "1",
            "--sample-num", "12", "--batch-size", "8", "--pairs", "40", "--large-classes", "3000",
            "--large-sample-num", "300"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["mode"] for row in summary["rows"]] == ["ivf", "full"]
    for row in summary["rows"]:
        assert 0.0 <= row["verify_acc"] <= 100.0 and row["steps"] > 0
        features = np.load(out / "features" / row["mode"] / "pairs.npy")
        assert features.shape == (80, 64) and np.isfinite(features).all()
        assert (out / "runs" / row["mode"] / "curves.png").exists()
    assert (out / "roc.png").stat().st_size > 0
    assert (out / "converted" / "meta.json").exists()
    assert "sampled (ivf) vs full softmax" in result.output
    large = summary["large_class"]
    assert large["classes"] == 3000 and [r["mode"] for r in large["rows"]] == ["full", "ivf"]
    assert large["speedup"] > 0 and 0.0 <= large["recall"] <= 1.0

    # A second run replaces the folder by default; --keep refuses to.
    again = runner.invoke(app, args + ["--keep"])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_demo_refuses_impossible_sizes(runner, tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "--identities", "50", "--sample-num", "10"])
    assert result.exit_code == 2
    assert "--sample-num" in result.output


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "0"), ("--batch-size", "1"), ("--pairs", "0")])
def test_demo_refuses_bad_sizes_before_any_work(runner, tmp_path, flag, value):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), flag, value])
    assert result.exit_code == 2 and f"{flag} {value}: must be at least" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "d").exists()


def test_demo_refuses_a_large_stage_smaller_than_its_batch(runner, tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "--large-classes", "100"])
    assert result.exit_code == 2
    assert "--large-classes" in result.output


def test_demo_names_the_large_sample_num_when_it_is_the_one_too_small(runner, tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "--large-sample-num", "100"])
    assert result.exit_code == 2 and "--large-sample-num 100 must be at least the large-class stage's batch" \
        in " ".join(result.output.split())
