"""Run metrics: `metrics.jsonl` (one JSON object per line), `curves.png`, optional TensorBoard events.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> log = MetricsLog(tmp.name, enabled=True, tensorboard=False)
>>> log.write({"kind": "train", "step": 100, "loss": 2.3})
>>> log.write({"kind": "train", "step": 200, "loss": 1.9})
>>> log.truncate_after(100)
>>> read_metrics(Path(tmp.name) / "metrics.jsonl")
[{'kind': 'train', 'step': 100, 'loss': 2.3}]
>>> log.close(); tmp.cleanup()

Only rank 0 writes (`enabled`). On resume, `truncate_after(step)` drops the lines a killed run logged after
its last checkpoint, so the file reads like one uninterrupted run; `plot()` draws loss and accuracy
against step into `curves.png`.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcs_cli.fsutil import atomic_path


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it is intact
    return rows


class MetricsLog:
    """Appends metric rows to `run_dir/metrics.jsonl` (rank 0 only) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:  # optional extra: `pip install dcs-cli[tensorboard]`
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Keep only the rows with `step <= step` (resume after a kill)."""
        if not self.enabled:
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def reset(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            kind = row.get("kind", "train")
            for key, value in row.items():
                if key not in ("step", "kind", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, row.get("step", 0))

    def plot(self) -> Path | None:
        """Write curves.png (training loss and accuracy, validation accuracy) atomically."""
        if not self.enabled:
            return None
        rows = read_metrics(self.path)
        train = [r for r in rows if r.get("kind") == "train"]
        val = [r for r in rows if r.get("kind") == "val"]
        if not train and not val:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        if train:
            steps = [r["step"] for r in train]
            ax_loss.plot(steps, [r["loss"] for r in train], label="train loss")
            ax_acc.plot(steps, [r["acc"] for r in train], label="train top-1 (active classes)")
        if val:
            ax_acc.plot([r["step"] for r in val], [r["acc"] for r in val], "o-", label="val top-1 (all classes)")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        ax_acc.set_xlabel("step")
        ax_acc.set_ylabel("accuracy")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        target = self.run_dir / "curves.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        return target

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
