import json

from typer.testing import CliRunner

from dcs_cli.cli.app import app

runner = CliRunner()


def test_select_speed_tiny(tmp_path):
    out = tmp_path / "speed.json"
    result = runner.invoke(app, ["bench", "select-speed", "--classes", "3000", "--dim", "16", "--batch", "16",
                                 "--sample-num", "100", "--interval", "3", "--steps", "4", "--full-steps", "2",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["scenario"] == "select-speed"
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"full", "random", "exact", "hf", "hnsw"}
    assert rows["hf"]["refreshes"] >= 1 and rows["hf"]["amortized_s"] >= rows["hf"]["step_s"]
    assert rows["full"]["speedup"] == 1.0


def test_select_quality_tiny(tmp_path):
    out = tmp_path / "quality.json"
    result = runner.invoke(app, ["bench", "select-quality", "--classes", "400", "--dim", "8", "--batch", "8",
                                 "--budget", "0.05", "--steps", "30", "--interval", "10", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"full", "random", "hf", "hnsw", "exact", "hf+adaptive"}
    assert rows["exact"]["recall10"] == 1.0 and 0 <= rows["hf"]["top1"] <= 100


def test_bad_options():
    result = runner.invoke(app, ["bench", "select-speed", "--classes", "10", "--sample-num", "100"])
    assert result.exit_code != 0 and "exceeds" in result.output
    result = runner.invoke(app, ["bench", "select-quality", "--only-bogus"])
    assert result.exit_code != 0
