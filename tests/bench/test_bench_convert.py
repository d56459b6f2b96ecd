import json
from pathlib import Path

from dcs_cli.cli.app import app


def test_bench_convert_smoke(runner, tmp_path):
    out = tmp_path / "convert.json"
    result = runner.invoke(app, ["bench", "convert", "--images", "40", "--baseline-images", "10",
                                 "--workers", "2", "--rounds", "2", "--workdir", str(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["scenario"] == "convert" and data["params"]["images"] == 40
    assert data["params"]["rounds"] == 2
    if Path("/proc/self/mounts").exists():
        assert data["params"]["filesystem"] != "unknown"
    dcs, base, floor = data["rows"]
    assert dcs["images"] == 40 and base["images"] == 10 and floor["images"] == 40
    assert dcs["bytes_identical"] == 1.0 and base["speedup"] == 1.0 and floor["bytes_identical"] is None
    assert dcs["speedup_min"] <= dcs["speedup"] <= dcs["speedup_max"]
    for row in data["rows"]:
        assert row["images_per_second"] > 0 and row["seconds"] > 0
    assert list(tmp_path.iterdir()) == [out]  # temporary data removed
