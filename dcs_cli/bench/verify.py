"""`dcs bench verify`: the vectorised verification protocol against a straightforward per-threshold loop.

    dcs bench verify --pairs 6000 --folds 10 --json bench_verify.json

`verify_loop` below is the reference: the original InsightFace evaluation written out threshold by
threshold and fold by fold (one boolean pass over the pairs per threshold), sharing no code with
`dcs_cli.eval.verify`. The bench times each the same way (the best of `repeat` calls) on the same random
features and proves the figures equal (`identical_to_loop`; the loop's own row leaves it empty).
"""

from __future__ import annotations

import time

import numpy as np

from dcs_cli.bench.common import report
from dcs_cli.console import info, progress_bar
from dcs_cli.errors import UsageError
from dcs_cli.eval.verify import calculate_roc, calculate_val, evaluate, pair_distances

# ------------------------------------------------------------------------------------ loop reference


def _kfold(n: int, folds: int):
    """(train_idx, test_idx) per fold, consecutive blocks, the first n % folds one item longer."""
    start = 0
    for k in range(folds):
        size = n // folds + (1 if k < n % folds else 0)
        test = np.arange(start, start + size)
        train = np.concatenate([np.arange(0, start), np.arange(start + size, n)])
        start += size
        yield train, test


def _accuracy(threshold, dist, actual):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, actual))
    fp = np.sum(np.logical_and(predict, np.logical_not(actual)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(actual)))
    fn = np.sum(np.logical_and(np.logical_not(predict), actual))
    tpr = 0.0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0.0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _val_far(threshold, dist, actual):
    predict = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict, actual))
    false_accept = np.sum(np.logical_and(predict, np.logical_not(actual)))
    n_same, n_diff = np.sum(actual), np.sum(np.logical_not(actual))
    val = 0.0 if n_same == 0 else float(true_accept) / float(n_same)
    far = 0.0 if n_diff == 0 else float(false_accept) / float(n_diff)
    return val, far


def verify_loop(features: np.ndarray, issame: np.ndarray, folds: int = 10, far_target: float = 1e-3,
                advance=lambda n=1: None) -> dict:
    """The original protocol, one threshold at a time; returns the per-fold arrays it produces."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.sqrt(np.sum(np.square(x), axis=1, keepdims=True))
    emb1, emb2 = x[0::2], x[1::2]
    actual = np.asarray(issame, dtype=bool)
    n = actual.size
    thresholds = np.arange(0, 4, 0.01)
    tprs, fprs = np.zeros((folds, thresholds.size)), np.zeros((folds, thresholds.size))
    accuracy, best_thresholds = np.zeros(folds), np.zeros(folds)
    dist = np.sum(np.square(emb1 - emb2), axis=1)
    for k, (train, test) in enumerate(_kfold(n, folds)):
        acc_train = np.zeros(thresholds.size)
        for t, thr in enumerate(thresholds):
            _, _, acc_train[t] = _accuracy(thr, dist[train], actual[train])
        best = int(np.argmax(acc_train))
        for t, thr in enumerate(thresholds):
            tprs[k, t], fprs[k, t], _ = _accuracy(thr, dist[test], actual[test])
        _, _, accuracy[k] = _accuracy(thresholds[best], dist[test], actual[test])
        best_thresholds[k] = thresholds[best]
        advance(1)
    val_thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(folds), np.zeros(folds)
    for k, (train, test) in enumerate(_kfold(n, folds)):
        far_train = np.zeros(val_thresholds.size)
        for t, thr in enumerate(val_thresholds):
            _, far_train[t] = _val_far(thr, dist[train], actual[train])
        threshold = 0.0
        if np.max(far_train) >= far_target:
            # The original's interp1d(far_train, thresholds, kind="slinear"), walked by hand so repeated
            # FAR values work: from the last threshold with FAR <= target towards the next one.
            last = 0
            for t in range(val_thresholds.size):
                if far_train[t] <= far_target:
                    last = t
            threshold = val_thresholds[last]
            if far_train[last] < far_target and last + 1 < val_thresholds.size:
                lo_far, hi_far = far_train[last], far_train[last + 1]
                lo_thr, hi_thr = val_thresholds[last], val_thresholds[last + 1]
                threshold = lo_thr + (far_target - lo_far) * (hi_thr - lo_thr) / (hi_far - lo_far)
        val[k], far[k] = _val_far(threshold, dist[test], actual[test])
        advance(1)
    return {"accuracy": accuracy, "threshold": best_thresholds, "tpr": np.mean(tprs, 0), "fpr": np.mean(fprs, 0),
            "val": val, "far": far}


def verify_vectorised(features: np.ndarray, issame: np.ndarray, folds: int = 10, far_target: float = 1e-3) -> dict:
    """The same arrays from `dcs_cli.eval.verify` (what `dcs verify` runs)."""
    dist = pair_distances(features)
    actual = np.asarray(issame, dtype=bool)
    tpr, fpr, accuracy, best = calculate_roc(dist, actual, folds)
    val, far = calculate_val(dist, actual, folds, far_target)
    return {"accuracy": accuracy, "threshold": best, "tpr": tpr, "fpr": fpr, "val": val, "far": far}


def identical(a: dict, b: dict) -> bool:
    return bool(all(np.array_equal(a[k], b[k]) for k in a))


# ------------------------------------------------------------------------------------ data + scenario


def random_pairs(pairs: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of `pairs` pairs (half genuine) whose genuine pairs share an identity vector under noise
    of per-pair strength, so accuracy is high but not perfect and the ROC has a real shape."""
    rng = np.random.default_rng(seed)
    issame = np.arange(pairs) % 2 == 0
    ident = rng.standard_normal((pairs, dim))
    other = rng.standard_normal((pairs, dim))
    noise = rng.uniform(0.3, 2.2, size=(pairs, 1))
    first = ident + noise * rng.standard_normal((pairs, dim))
    second = np.where(issame[:, None], ident, other) + noise * rng.standard_normal((pairs, dim))
    features = np.empty((2 * pairs, dim), dtype=np.float32)
    features[0::2], features[1::2] = first, second
    return features, issame


MAX_FEATURE_BYTES = 8 << 30  # the random features' float32 matrix: a typo in --pairs or --dim stops here


def run_bench(pairs: int = 6000, folds: int = 10, dim: int = 256, seed: int = 0, repeat: int = 5,
              json_path=None) -> dict:
    if pairs < folds or folds < 2:
        raise UsageError(f"--pairs {pairs} / --folds {folds}: need folds >= 2 and pairs >= folds")
    if dim < 1 or repeat < 1:
        raise UsageError(f"--dim {dim} / --repeat {repeat}: both must be >= 1")
    if 2 * pairs * dim * 4 > MAX_FEATURE_BYTES:
        raise UsageError(f"--pairs {pairs} × --dim {dim} needs {2 * pairs * dim * 4 / 2**30:.0f} GiB of features "
                         f"(at most {MAX_FEATURE_BYTES >> 30} GiB here); lower them")
    features, issame = random_pairs(pairs, dim, seed)
    fast_s, fast = _best_of(repeat, lambda: verify_vectorised(features, issame, folds))
    full_s, (result, _) = _best_of(repeat, lambda: evaluate(features, issame, folds))
    info(f"running the per-threshold loop ({pairs} pairs, {folds} folds, {repeat}×)...")
    with progress_bar("loop reference", total=2 * folds * repeat, unit="folds") as advance:
        loop_s, slow = _best_of(repeat, lambda: verify_loop(features, issame, folds, advance=advance))
    full = {"accuracy": np.asarray(result.fold_accuracy), "val": result.val}
    full_same = bool(np.array_equal(full["accuracy"], slow["accuracy"]) and result.val == np.mean(slow["val"])
                 and result.accuracy == np.mean(slow["accuracy"]))
    rows = []
    for name, seconds, figures, same in (("loop (per threshold)", loop_s, slow, None),  # the reference
                                         ("dcs vectorised (acc + VAL)", fast_s, fast, identical(fast, slow)),
                                         ("dcs evaluate (+ ROC, AUC, EER)", full_s, full, full_same)):
        rows.append({
            "name": name, "seconds": seconds, "speedup_vs_loop": loop_s / seconds,
            "accuracy": float(np.mean(figures["accuracy"])), "accuracy_std": float(np.std(figures["accuracy"])),
            "val_at_far_1e-3": float(np.mean(figures["val"])), "identical_to_loop": same,
        })
    params = {"pairs": pairs, "folds": folds, "dim": dim, "seed": seed, "repeat": repeat}
    return report("verify", params, rows, json_path, cpu_only=True)


def _best_of(repeat: int, fn):
    """(fastest seconds of `repeat` calls, last result): the least disturbed run on a shared machine."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result

