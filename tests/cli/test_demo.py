import json

import numpy as np

from dcs_cli.cli.app import app


def test_demo_runs_the_whole_pipeline(runner, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--identities", "24", "--images-per-identity", "4", "--epochs", "1",
            "--sample-num", "12", "--batch-size", "8", "--pairs", "40"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["mode"] for row in summary["rows"]] == ["hf", "full"]
    for row in summary["rows"]:
        assert 0.0 <= row["verif. acc %"] <= 100.0 and row["steps"] > 0
        features = np.load(out / "features" / row["mode"] / "pairs.npy")
        assert features.shape == (80, 64) and np.isfinite(features).all()
        assert (out / "runs" / row["mode"] / "curves.png").exists()
    assert (out / "roc.png").stat().st_size > 0
    assert (out / "converted" / "meta.json").exists()
    assert "sampled (hf) vs full softmax" in result.output

    # A second run replaces the folder by default; --keep refuses to.
    again = runner.invoke(app, args + ["--keep"])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_demo_refuses_impossible_sizes(runner, tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "d"), "--identities", "50", "--sample-num", "10"])
    assert result.exit_code == 2
    assert "--sample-num" in result.output
