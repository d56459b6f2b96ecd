import json

from dcs_cli.cli.app import app


def test_bench_verify_smoke(runner, tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "verify", "--pairs", "120", "--folds", "4", "--dim", "8",
                                 "--repeat", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["scenario"] == "verify" and report["params"]["pairs"] == 120
    assert [row["identical_to_loop"] for row in report["rows"]] == [None, True, True]  # the loop is the reference
    assert len({row["accuracy"] for row in report["rows"]}) == 1


def test_bench_verify_sizes_are_checked_before_allocating(runner):
    result = runner.invoke(app, ["bench", "verify", "--dim", "-1"])
    assert result.exit_code == 2 and "both must be >= 1" in result.output
    result = runner.invoke(app, ["bench", "verify", "--pairs", "100000000000"])
    assert result.exit_code == 2 and "GiB of features" in result.output
