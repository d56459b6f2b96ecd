import json

from typer.testing import CliRunner

from dcs_cli.cli.app import app

runner = CliRunner()


def test_select_speed_background_reduced_index(tmp_path):
    out = tmp_path / "speed.json"
    result = runner.invoke(app, ["bench", "select-speed", "--classes", "3000", "--dim", "32", "--batch", "16",
                                 "--sample-num", "100", "--interval", "3", "--steps", "8", "--only", "hf",
                                 "--only", "hnsw", "--index-dim", "8", "--rerank", "2", "--refresh", "background",
                                 "--hnsw-rebuild-fraction", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["params"]["index_dim"] == 8 and data["params"]["refresh"] == "background"
    for row in data["rows"]:
        assert row["refreshes"] >= 1 and 0.0 <= row["recall"] <= 1.0
        assert row["stall_s"] <= row["refresh_s"] and row["amortized_s"] >= row["step_s"]


def test_select_speed_bad_speed_options():
    result = runner.invoke(app, ["bench", "select-speed", "--classes", "3000", "--refresh", "sometimes"])
    assert result.exit_code != 0 and "--refresh" in result.output
    result = runner.invoke(app, ["bench", "select-speed", "--classes", "3000", "--rerank", "0"])
    assert result.exit_code != 0 and "--rerank" in result.output
