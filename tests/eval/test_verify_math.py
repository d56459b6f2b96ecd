import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcs_cli.bench.verify import random_pairs, verify_loop, verify_vectorised
from dcs_cli.errors import DataError, UsageError
from dcs_cli.eval.verify import (
    evaluate,
    exact_roc,
    fold_ids,
    pair_distances,
    roc_summary,
    threshold_at_far,
)


@pytest.mark.parametrize("pairs,folds,dim,seed", [(300, 10, 32, 0), (257, 7, 16, 1), (120, 3, 8, 2)])
def test_vectorised_equals_the_per_threshold_loop(pairs, folds, dim, seed):
    features, issame = random_pairs(pairs, dim, seed)
    fast = verify_vectorised(features, issame, folds)
    slow = verify_loop(features, issame, folds)
    for key in slow:
        np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)


def test_loop_equality_with_unbalanced_labels_and_ties():
    rng = np.random.default_rng(5)
    # Quantised features make many pairs share a distance; labels are not alternating.
    features = np.round(rng.standard_normal((2 * 150, 4)), 0).astype(np.float32) + 0.5
    issame = rng.random(150) < 0.3
    fast = verify_vectorised(features, issame, 10)
    slow = verify_loop(features, issame, 10)
    for key in slow:
        np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)


def test_evaluate_reports_the_loop_figures():
    features, issame = random_pairs(400, 32, 3)
    result, _ = evaluate(features, issame, folds=10)
    slow = verify_loop(features, issame, 10)
    assert result.accuracy == np.mean(slow["accuracy"])
    assert result.accuracy_std == np.std(slow["accuracy"])
    assert result.val == np.mean(slow["val"]) and result.far == np.mean(slow["far"])
    assert 0.5 < result.accuracy < 1.0 and 0.5 < result.auc <= 1.0


@given(n=st.integers(1, 500), folds=st.integers(2, 20))
def test_fold_sizes_match_sklearn_kfold(n, folds):
    if folds > n:
        with pytest.raises(UsageError, match="more than"):
            fold_ids(n, folds)
        return
    ids = fold_ids(n, folds)
    sizes = np.bincount(ids, minlength=folds)
    expected = [n // folds + (1 if k < n % folds else 0) for k in range(folds)]
    assert sizes.tolist() == expected
    assert np.all(np.diff(ids) >= 0)  # consecutive blocks, file order


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=40))
def test_auc_is_the_probability_a_genuine_pair_is_closer(items):
    dist = np.array([d / 3 for d, _ in items])
    issame = np.array([s for _, s in items])
    if issame.all() or not issame.any():
        return
    fpr, tpr = exact_roc(dist, issame)
    auc, eer, _ = roc_summary(fpr, tpr)
    same, diff = dist[issame], dist[~issame]
    wins = (same[:, None] < diff[None, :]).sum() + 0.5 * (same[:, None] == diff[None, :]).sum()
    assert auc == pytest.approx(wins / (same.size * diff.size))
    assert 0.0 <= eer <= 1.0
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_separable_scores_give_perfect_summary():
    dist = np.array([0.1, 0.2, 0.3, 1.5, 1.6, 1.9])
    issame = np.array([True, True, True, False, False, False])
    auc, eer, tar = roc_summary(*exact_roc(dist, issame))
    assert auc == 1.0 and eer == 0.0 and all(v == 1.0 for v in tar.values())


def test_eer_of_a_symmetric_overlap():
    # one impostor (2.5) sits among the genuine pairs (0..3): at the threshold accepting it and three
    # genuine pairs, FPR = FNR = 1/4.
    dist = np.array([0.0, 1.0, 2.0, 3.0, 2.5, 3.5, 4.5, 5.5])
    issame = np.array([True] * 4 + [False] * 4)
    _, eer, _ = roc_summary(*exact_roc(dist, issame))
    assert eer == pytest.approx(0.25)


def test_threshold_at_far_survives_repeated_far_values():
    thresholds = np.arange(0, 1, 0.1)
    far = np.array([0, 0, 0, 0.001, 0.001, 0.002, 0.002, 0.01, 0.01, 0.01])
    # on a plateau: its last threshold; between plateaus: from the end of one to the start of the next.
    assert threshold_at_far(far, thresholds, 0.001) == pytest.approx(0.4)
    assert threshold_at_far(far, thresholds, 0.0015) == pytest.approx(0.45)
    assert threshold_at_far(far, thresholds, 0.0005) == pytest.approx(0.25)
    assert threshold_at_far(far, thresholds, 0.01) == pytest.approx(0.9)
    assert threshold_at_far(far, thresholds, 0.5) == 0.0  # never reached


def test_distances_are_squared_euclidean_of_unit_vectors():
    features = np.array([[3.0, 4.0], [6.0, 8.0], [1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(pair_distances(features), [0.0, 2.0])


@pytest.mark.parametrize("features,issame,message", [
    (np.zeros((5, 4)), np.array([True, False]), "5 feature rows but the .bin has 2 pairs"),
    (np.zeros(8), np.array([True, False, True, False]), "expected a 2-D array"),
    (np.full((4, 2), np.nan), np.array([True, False]), "row 0 holds NaN"),
    (np.zeros((0, 4)), np.array([], dtype=bool), "holds no pairs"),
])
def test_mismatches_are_one_line_data_errors(features, issame, message):
    with pytest.raises(DataError, match=message) as err:
        evaluate(features, issame, folds=2)
    assert "\n" not in str(err.value)


def _perfect_pairs(issame: np.ndarray) -> np.ndarray:
    """Same pairs: identical rows; different pairs: independent random rows (distances spread below 4)."""
    rng = np.random.default_rng(0)
    a, other = rng.standard_normal((2, issame.size, 16))
    return np.stack([a, np.where(issame[:, None], a, other)], axis=1).reshape(2 * issame.size, 16)


@pytest.mark.parametrize("issame", [np.arange(600) % 2 == 0, np.arange(600) < 300], ids=["interleaved", "grouped"])
def test_val_is_averaged_over_the_folds_that_hold_same_pairs(issame):
    """A .bin listing its same pairs first leaves half the test folds without any: they have no VAL, not 0."""
    result, _ = evaluate(_perfect_pairs(issame), issame, folds=10)
    assert result.accuracy == 1.0 and result.val == 1.0 and result.val_std == 0.0
    assert result.far < 0.01


@pytest.mark.parametrize("value,kind", [(True, "same-identity"), (False, "different-identity")])
def test_a_bin_of_one_kind_of_pair_is_refused(value, kind):
    issame = np.full(40, value)
    with pytest.raises(DataError, match=f"lfw.npy: all 40 pairs are {kind} pairs; verification needs both") as err:
        evaluate(np.random.default_rng(0).standard_normal((80, 8)), issame, folds=4, where="lfw.npy")
    assert "\n" not in str(err.value)
