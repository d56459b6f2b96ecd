"""Face-verification metrics of the InsightFace protocol: `result, (fpr, tpr) = evaluate(features, issame)`.

    >>> rng = np.random.default_rng(0)
    >>> issame = np.arange(100) % 2 == 0                 # 100 pairs, every other one the same identity
    >>> a = rng.standard_normal((100, 16))
    >>> b = np.where(issame[:, None], a + 0.1 * rng.standard_normal((100, 16)), rng.standard_normal((100, 16)))
    >>> features = np.stack([a, b], axis=1).reshape(200, 16)      # rows 2i and 2i+1 are pair i
    >>> result, (fpr, tpr) = evaluate(features, issame, folds=10)
    >>> result.pairs, round(result.accuracy, 3), result.auc, result.eer   # accuracy: mean over test folds
    (100, 0.99, 1.0, 0.0)

`features` holds two rows per pair (rows 2i and 2i+1 are pair i, the `.bin` order). The protocol:
L2-normalise each row; distance = squared euclidean distance of the pair; thresholds 0..4 step 0.01;
K folds in file order (no shuffle, sklearn `KFold` sizes); on each fold the threshold with the best
training-fold accuracy is applied to the test fold; accuracy = mean ± std over folds. VAL at FAR=1e-3:
thresholds 0..4 step 0.001, on each fold the threshold whose training FAR equals the target is found by
linear interpolation of threshold against FAR, and VAL/FAR are measured on the test fold. VAL is averaged
over the test folds that hold same-identity pairs and FAR over those that hold different ones (the original
counts a fold without any as 0, so a `.bin` listing its same pairs first halves VAL).

Unlike the original, counts per threshold come from one sort and `searchsorted` for all thresholds and
folds at once (O(n log n + K·T·log n) instead of O(K·T·n)); the numbers are identical because every
figure is a ratio of the same integer counts. The original interpolation (`scipy.interpolate.interp1d`)
fails on current scipy when the training FAR repeats along the thresholds, which it always does;
`threshold_at_far` computes with numpy what it returned when it worked (see there).

AUC, EER and TAR@FAR come from the exact ROC over all pairs (every distinct distance is a threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from dcs_cli.console import warn
from dcs_cli.errors import DataError, UsageError

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
TAR_FARS = (1e-4, 1e-3, 1e-2)


@dataclass
class VerifyResult:
    """Figures of one target; `asdict(result)` is what `--json` writes."""

    pairs: int
    folds: int
    accuracy: float
    accuracy_std: float
    threshold: float
    val: float
    val_std: float
    far: float
    auc: float
    eer: float
    tar_at_far: dict = field(default_factory=dict)
    fold_accuracy: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_pair_kinds(issame: np.ndarray, where: str) -> None:
    """Raise a one-line DataError unless `issame` holds both same-identity and different-identity pairs."""
    issame = np.asarray(issame, dtype=bool)
    if issame.all() or not issame.any():
        kind = "same-identity" if issame.all() else "different-identity"
        raise DataError(f"{where}: all {issame.size} pairs are {kind} pairs; verification needs both same and "
                        "different pairs (a .bin of the InsightFace protocol)")


def check_features(features: np.ndarray, issame: np.ndarray, where: str = "features") -> None:
    """Raise a one-line DataError unless `features` is a finite (2·pairs × d) matrix matching `issame`."""
    issame = np.asarray(issame)
    if issame.ndim != 1 or issame.size == 0:
        raise DataError(f"{where}: the .bin holds no pairs; verification needs a .bin with issame labels")
    check_pair_kinds(issame, where)
    if features.ndim != 2:
        raise DataError(f"{where}: expected a 2-D array (2·pairs × dim), got shape {features.shape}; "
                        "pass the .npy written by `dcs extract`")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise DataError(f"{where}: features of dtype {features.dtype} are not real numbers; pass the float32 "
                        ".npy written by `dcs extract`")
    if features.shape[1] == 0:
        raise DataError(f"{where}: the features have 0 columns; pass the .npy written by `dcs extract`")
    if features.shape[0] != 2 * issame.size:
        raise DataError(f"{where}: {features.shape[0]} feature rows but the .bin has {issame.size} pairs "
                        f"(needs {2 * issame.size} rows); features and .bin do not belong together")
    if not np.isfinite(features).all():
        bad = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise DataError(f"{where}: row {bad} holds NaN or inf; re-extract the features")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero, as sklearn's `normalize` does)."""
    norms = np.sqrt(np.sum(np.square(x), axis=1, keepdims=True))
    norms[norms == 0] = 1.0
    return x / norms


def pair_distances(features: np.ndarray) -> np.ndarray:
    """Squared euclidean distance of each pair's L2-normalised embeddings (float64)."""
    emb = l2_normalize(np.asarray(features, dtype=np.float64))
    return np.sum(np.square(emb[0::2] - emb[1::2]), axis=1)


def fold_ids(n: int, folds: int) -> np.ndarray:
    """Fold index of each of `n` items, in order, with sklearn `KFold(shuffle=False)` sizes."""
    if folds < 2:
        raise UsageError(f"--folds {folds}: need at least 2 folds")
    if folds > n:
        raise UsageError(f"--folds {folds} is more than the {n} pairs; use --folds {n} or fewer")
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def _counts_below(dist: np.ndarray, fold: np.ndarray, folds: int, thresholds: np.ndarray) -> np.ndarray:
    """(folds, T): per fold, how many of `dist` are strictly below each threshold (`dist < t`)."""
    out = np.empty((folds, thresholds.size), dtype=np.int64)
    for k in range(folds):
        out[k] = np.searchsorted(np.sort(dist[fold == k]), thresholds, side="left")
    return out


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _confusion(dist, issame, fold, folds, thresholds):
    """Per-fold and per-threshold (tp, fp, tn, fn) on the test folds and the training complements."""
    same_k = np.bincount(fold[issame], minlength=folds)
    diff_k = np.bincount(fold[~issame], minlength=folds)
    tp = _counts_below(dist[issame], fold[issame], folds, thresholds)
    fp = _counts_below(dist[~issame], fold[~issame], folds, thresholds)
    test = (tp, fp, diff_k[:, None] - fp, same_k[:, None] - tp)
    tp_tr, fp_tr = tp.sum(0) - tp, fp.sum(0) - fp
    same_tr, diff_tr = same_k.sum() - same_k, diff_k.sum() - diff_k
    train = (tp_tr, fp_tr, diff_tr[:, None] - fp_tr, same_tr[:, None] - tp_tr)
    return test, train


def calculate_roc(dist: np.ndarray, issame: np.ndarray, folds: int, thresholds: np.ndarray = ACC_THRESHOLDS):
    """Mean TPR/FPR per threshold over test folds, each fold's test accuracy and chosen threshold."""
    fold = fold_ids(dist.size, folds)
    (tp, fp, tn, fn), (tp_tr, _, tn_tr, _) = _confusion(dist, issame, fold, folds, thresholds)
    n_test = np.bincount(fold, minlength=folds)
    acc_train = (tp_tr + tn_tr) / (dist.size - n_test)[:, None]
    best = np.argmax(acc_train, axis=1)  # first maximum, as the original's per-threshold scan
    rows = np.arange(folds)
    accuracy = (tp[rows, best] + tn[rows, best]) / n_test
    tpr = np.mean(_safe_div(tp, tp + fn), axis=0)
    fpr = np.mean(_safe_div(fp, fp + tn), axis=0)
    return tpr, fpr, accuracy, thresholds[best]


def threshold_at_far(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold at which the (non-decreasing) training FAR reaches `far_target`; 0.0 if it never does.

    FAR is a step function of the threshold, so it repeats in plateaus. The threshold is the last one of
    the plateau at or below the target, interpolated linearly towards the first threshold of the next
    plateau when the target lies between them: the value a linear spline through the repeated points
    takes, i.e. what the original `interp1d(far, thresholds, kind="slinear")` returned before scipy began
    rejecting repeated x values.
    """
    if np.max(far_train) < far_target:
        return 0.0
    j = int(np.searchsorted(far_train, far_target, side="right")) - 1  # last index with FAR <= target
    if j < 0:
        return float(thresholds[0])
    if far_train[j] == far_target or j == far_train.size - 1:
        return float(thresholds[j])
    f0, f1 = far_train[j], far_train[j + 1]
    t0, t1 = thresholds[j], thresholds[j + 1]
    return float(t0 + (far_target - f0) * (t1 - t0) / (f1 - f0))


def calculate_val(dist: np.ndarray, issame: np.ndarray, folds: int, far_target: float = 1e-3,
                  thresholds: np.ndarray = VAL_THRESHOLDS):
    """VAL (true-accept rate) and FAR per test fold at the training-fold threshold of FAR = `far_target`."""
    fold = fold_ids(dist.size, folds)
    _, (_, fp_tr, tn_tr, _) = _confusion(dist, issame, fold, folds, thresholds)
    far_train = _safe_div(fp_tr, fp_tr + tn_tr)
    val = np.empty(folds)
    far = np.empty(folds)
    for k in range(folds):
        thr = threshold_at_far(far_train[k], thresholds, far_target)
        test = fold == k
        accept = dist[test] < thr
        same = issame[test]
        val[k] = _safe_div(np.sum(accept & same), np.sum(same))
        far[k] = _safe_div(np.sum(accept & ~same), np.sum(~same))
    return val, far


def exact_roc(dist: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and TPR at every distinct distance (accept when `dist <= t`), from (0, 0) to (1, 1)."""
    order = np.argsort(dist, kind="stable")
    d, same = dist[order], issame[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(d)), d.size - 1]  # ties enter together
    tp = np.cumsum(same)[last_of_value]
    fp = np.cumsum(~same)[last_of_value]
    n_same, n_diff = max(int(same.sum()), 1), max(int((~same).sum()), 1)
    return np.r_[0.0, fp / n_diff], np.r_[0.0, tp / n_same]


def roc_summary(fpr: np.ndarray, tpr: np.ndarray, fars=TAR_FARS) -> tuple[float, float, dict]:
    """AUC (trapezoid), EER (where FPR = 1 − TPR, interpolated) and TAR at each FAR (best TPR with FPR ≤ FAR)."""
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    miss = 1 - tpr
    gap = fpr - miss  # rises from -1 to +1 along the curve
    i = int(np.argmax(gap >= 0))
    if i == 0:
        eer = float(fpr[0])
    else:
        g0, g1 = gap[i - 1], gap[i]
        w = 0.0 if g1 == g0 else -g0 / (g1 - g0)
        eer = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
    tar = {f"{far:g}": float(np.max(tpr[fpr <= far])) for far in fars}
    return auc, eer, tar


def evaluate(features: np.ndarray, issame, folds: int = 10, far_target: float = 1e-3,
             where: str = "features") -> tuple[VerifyResult, tuple[np.ndarray, np.ndarray]]:
    """All figures for one target plus its exact ROC `(fpr, tpr)` for plotting."""
    features = np.asarray(features)
    issame = np.asarray(issame, dtype=bool)
    check_features(features, issame, where)
    dist = pair_distances(features)
    fold_ids(dist.size, folds)  # validates `folds` before any work
    _, _, accuracy, best = calculate_roc(dist, issame, folds)
    val, far = calculate_val(dist, issame, folds, far_target)
    # a test fold without same (different) pairs has no VAL (FAR): average over the folds that have one
    fold = fold_ids(dist.size, folds)
    has_same = np.bincount(fold[issame], minlength=folds) > 0
    has_diff = np.bincount(fold[~issame], minlength=folds) > 0
    if not (has_same.all() and has_diff.all()):
        warn(f"{where}: {folds - int(np.sum(has_same & has_diff))} of {folds} test folds hold only one kind of "
             f"pair (e.g. the .bin lists its same pairs first); VAL is the mean over the {int(has_same.sum())} "
             f"folds with same pairs, FAR over the {int(has_diff.sum())} with different pairs")
    val, far = val[has_same], far[has_diff]
    fpr, tpr = exact_roc(dist, issame)
    auc, eer, tar = roc_summary(fpr, tpr)
    result = VerifyResult(
        pairs=int(issame.size), folds=folds,
        accuracy=float(np.mean(accuracy)), accuracy_std=float(np.std(accuracy)),
        threshold=float(np.mean(best)),
        val=float(np.mean(val)), val_std=float(np.std(val)), far=float(np.mean(far)),
        auc=auc, eer=eer, tar_at_far=tar, fold_accuracy=[float(a) for a in accuracy],
    )
    return result, (fpr, tpr)
