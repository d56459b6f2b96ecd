import json

from dcs_cli.cli.app import app


def test_bench_convert_smoke(runner, tmp_path):
    out = tmp_path / "convert.json"
    result = runner.invoke(app, ["bench", "convert", "--images", "40", "--baseline-images", "10",
                                 "--workers", "2", "--workdir", str(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["scenario"] == "convert" and data["params"]["images"] == 40
    dcs, base = data["rows"]
    assert dcs["images"] == 40 and base["images"] == 10
    assert dcs["bytes_identical"] == 1.0 and base["speedup"] == 1.0
    assert dcs["images_per_second"] > 0 and base["images_per_second"] > 0
    assert list(tmp_path.iterdir()) == [out]  # temporary data removed
