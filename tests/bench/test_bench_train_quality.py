"""`dcs bench train-quality`: its JSON rows, and the accuracy of sampled softmax through `dcs train`'s code."""

import json

import numpy as np
import pytest

from dcs_cli.bench.train_quality import TrainQualitySpec, error_rates, run_train_quality, train_config
from dcs_cli.cli.app import app

ROW_KEYS = {"name", "mode", "head", "val_top1", "verify_acc", "tar_at_far_1e-3", "family_far", "frr", "wall_s",
            "samples_per_s", "active", "rows_read"}


def test_json_rows_carry_the_named_figures(runner, tmp_path):
    out = tmp_path / "tq.json"
    result = runner.invoke(app, ["bench", "train-quality", "--quick", "--identities", "40", "--epochs", "1",
                                 "--mode", "full", "--mode", "random", "--head", "softmax", "--head", "cosface",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["scenario"] == "train-quality"
    assert [r["name"] for r in report["rows"]] == ["full/softmax", "random/softmax", "full/cosface", "random/cosface"]
    for row in report["rows"]:
        assert ROW_KEYS <= set(row)
        assert 0 <= row["val_top1"] <= 100 and 0 <= row["verify_acc"] <= 100 and row["wall_s"] > 0
        assert 0 <= row["family_far"] <= 100 and 0 <= row["frr"] <= 100
    assert report["rows"][0]["active"] == 40 and report["rows"][1]["active"] == 32
    rows_read = [r["rows_read"] for r in report["rows"]]  # % of the classes a step reads
    assert rows_read[0] == rows_read[2] == 100.0 and rows_read[1] == 80.0  # full; random/softmax: 32 of 40
    assert rows_read[3] > 80.0  # random/cosface also reads its tail draws


def test_runs_report_the_mean_each_run_and_the_paired_differences(runner, tmp_path):
    out = tmp_path / "tq.json"
    result = runner.invoke(app, ["bench", "train-quality", "--quick", "--identities", "40", "--epochs", "1",
                                 "--mode", "random", "--mode", "full", "--head", "softmax", "--runs", "2",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    random, full = json.loads(out.read_text())["rows"]
    for row in (random, full):
        assert len(row["val_top1_runs"]) == len(row["verify_acc_runs"]) == 2
        assert row["val_top1"] == pytest.approx(sum(row["val_top1_runs"]) / 2, abs=0.01)
        assert row["verify_acc"] == pytest.approx(sum(row["verify_acc_runs"]) / 2, abs=0.01)
        assert row["val_top1_sd"] >= 0 and row["verify_acc_sd"] >= 0
    for key in ("val_top1", "verify_acc"):  # random − full, seed by seed
        diffs = [a - b for a, b in zip(random[f"{key}_runs"], full[f"{key}_runs"], strict=True)]
        assert random[f"{key}_vs_full"] == pytest.approx(sum(diffs) / 2, abs=0.02)
        assert random[f"{key}_vs_full_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2, abs=0.02)
    assert "val_top1_vs_random" not in random and "val_top1_vs_full" not in full
    assert "val_top1_vs_random" in full  # full beside random: compared the other way too
    assert "paired by training seed" in result.output and "val_top1 − full" in result.output


def test_error_rates_split_the_verification_errors():
    # squared distances: same-identity pairs 0, 2, 4 at 0, 2 (the threshold: rejected) and 4; family-mate
    # pairs 1, 3 at 0.8 and 4; pair 5, other identities, at 0 (accepted, counted in neither rate)
    features = np.array([[1, 0], [1, 0], [1, 0], [0.6, 0.8], [1, 0], [0, 1], [1, 0], [-1, 0], [1, 0], [-1, 0],
                         [1, 0], [1, 0]])
    family_far, frr = error_rates(features, [True, False, True, False, True, False], [1, 3], threshold=2.0)
    assert family_far == 50.0 and frr == pytest.approx(200 / 3)
    assert np.isnan(error_rates(features, [True, False, True, False, True, False], [], threshold=2.0)[0])


def test_each_run_trains_with_its_own_seed(tmp_path):
    spec = TrainQualitySpec.from_options(quick=True, seed=5, runs=3)
    seeds = [(cfg.optim.seed, cfg.selection.seed)
             for cfg in (train_config(spec, tmp_path, tmp_path / "run", "hf", "cosface", run) for run in range(3))]
    assert seeds == [(5, 5), (6, 6), (7, 7)]


def test_margin_heads_warm_up_longer_and_set_overrides_every_head(tmp_path):
    spec = TrainQualitySpec.from_options(epochs=8)
    warm = {head: train_config(spec, tmp_path, tmp_path / "run", "hf", head).optim.warmup_epochs
            for head in ("softmax", "cosface", "arcface")}
    assert warm == {"softmax": 0.5, "cosface": 2.0, "arcface": 2.0}
    default = TrainQualitySpec.from_options()  # 4 epochs
    assert train_config(default, tmp_path, tmp_path / "run", "random", "arcface").optim.warmup_epochs == 2.0
    quick = TrainQualitySpec.from_options(quick=True)  # 3 epochs: at most half the run
    assert train_config(quick, tmp_path, tmp_path / "run", "full", "cosface").optim.warmup_epochs == 1.5
    spec = TrainQualitySpec.from_options(overrides=["optim.warmup_epochs=1"])
    assert {train_config(spec, tmp_path, tmp_path / "run", "hf", head).optim.warmup_epochs
            for head in ("softmax", "arcface")} == {1.0}


def test_bad_options_are_one_line_errors(runner):
    result = runner.invoke(app, ["bench", "train-quality", "--mode", "nope"])
    assert result.exit_code == 2 and "--mode 'nope'" in result.output
    result = runner.invoke(app, ["bench", "train-quality", "--sample-num", "5000"])
    assert result.exit_code == 2 and "--sample-num" in result.output
    result = runner.invoke(app, ["bench", "train-quality", "--runs", "0"])
    assert result.exit_code == 2 and "--runs must be >= 1" in result.output
    result = runner.invoke(app, ["bench", "train-quality", "--set", "selection.no_such_key=1"])
    assert result.exit_code != 0 and "selection.no_such_key" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_sampled_softmax_keeps_full_accuracy_on_images():
    """hf at 5% of the classes (`--quick`'s data) trains an image backbone at least as well as full softmax;
    with rows that froze their momentum between selections (the rule before optim.catch_up) it trailed by
    27 pt (34.0 vs 61.4)."""
    spec = TrainQualitySpec.quick()
    spec.modes, spec.heads = ("full", "hf"), ("softmax",)
    rows = {r["mode"]: r for r in run_train_quality(spec)["rows"]}
    assert rows["hf"]["val_top1"] >= rows["full"]["val_top1"] - 3.0, rows


@pytest.mark.parametrize("args,message", [
    (["--set", "selection.mode=hf"], "selection.mode is the bench's to set"),
    (["--set", "head.type=softmax"], "head.type is the bench's to set"),
    (["--set", "output.dir=/tmp/x"], "output.dir is the bench's to set"),
    (["--set", "data.batch_size=8"], "data.batch_size is the bench's to set"),
    (["--runs", "2", "--set", "optim.seed=7"], "--set optim.seed with --runs 2: run r trains with seed"),
    (["--set", "head={type: arcface}"], "head.type is the bench's to set"),  # a whole section too
    (["--set", "selection.adaptive=true"], "row full/softmax: selection.adaptive works with modes hf, hnsw, ivf"),
    (["--identities", "10"], "--identities must be >= the batch size (32), got 10"),
])
def test_settings_that_would_mislabel_or_merge_the_rows_are_refused(runner, args, message):
    result = runner.invoke(app, ["bench", "train-quality", "--quick", *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_one_run_may_take_its_seed_and_a_contender_may_be_tuned(tmp_path):
    spec = TrainQualitySpec.from_options(quick=True, overrides=["optim.seed=7", "head.margin=0.2",
                                                                "data.workers=1", "selection.adaptive=true"])
    spec.validate()
    cfg = train_config(spec, tmp_path, tmp_path / "run", "hf", "cosface")  # hf uses adaptive
    assert (cfg.optim.seed, cfg.head.margin, cfg.head.type, cfg.selection.mode) == (7, 0.2, "cosface", "hf")
    assert cfg.data.workers == 1 and cfg.selection.adaptive
