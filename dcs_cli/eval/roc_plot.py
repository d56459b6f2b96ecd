"""ROC curves as PNG, one curve per target: `plot_roc({"lfw": (fpr, tpr)}, "roc.png")`.

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> fpr, tpr = np.array([0.0, 0.001, 0.01, 1.0]), np.array([0.0, 0.9, 0.99, 1.0])   # evaluate()'s ROC
    >>> path = plot_roc({"lfw": (fpr, tpr)}, Path(tmp.name) / "roc.png", title="ROC: lfw")
    >>> path.read_bytes()[1:4]
    b'PNG'
    >>> tmp.cleanup()

FPR on a log axis (where face verification is compared: 1e-4..1e-2) against TPR, one curve per target,
written atomically with matplotlib's file-only Agg backend so no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Write one PNG with a curve per name; labels carry the AUC. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcs_cli.fsutil import atomic_path

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    floor = 1e-5
    for name, (fpr, tpr) in curves.items():
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        ax.step(np.maximum(fpr, floor), tpr, where="post", label=f"{name} (AUC {auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
