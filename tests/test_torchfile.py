"""Torch files load as data only, and a corrupt one is named: `dcs_cli.torchfile` and its callers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dcs_cli.cli.app import app
from dcs_cli.errors import DataError
from dcs_cli.torchfile import CHECKSUM_KEY, load_torch_file, save_torch_file
from dcs_cli.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "synthetic.yaml")


class _RunsCode:
    """What a hostile .pt carries: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.pt"
    torch.save({"backbone": {"w": torch.zeros(2)}, "config": {}, "epoch": 1, "step": 1, "optimizer": {},
                "payload": _RunsCode(marker)}, path)
    return path, marker


def test_hostile_pickle_is_refused_by_extract_and_resume(runner, tmp_path, pairs_bin):
    path, marker = _hostile(tmp_path)
    extract = runner.invoke(app, ["extract", "--checkpoint", str(path), "--bin", str(pairs_bin),
                                  "--out-dir", str(tmp_path / "feats")])
    assert extract.exit_code != 0
    assert "refused to load" in extract.output and "posix.system" in extract.output, extract.output
    resume = runner.invoke(app, ["train", "--resume", str(path)])
    assert resume.exit_code != 0 and "refused to load" in resume.output, resume.output
    assert not marker.exists()


def test_checksum_round_trip_and_flipped_bytes_are_named(tmp_path):
    state = {"backbone": {"w": torch.arange(4096, dtype=torch.float32) + 0.5}, "epoch": 3, "config": {"a": [1, 2]}}
    path = save_torch_file(state, tmp_path / "ckpt.pt")
    loaded = load_torch_file(path, "checkpoint")
    assert CHECKSUM_KEY not in loaded and loaded["epoch"] == 3 and torch.equal(loaded["backbone"]["w"],
                                                                                 state["backbone"]["w"])
    raw = bytearray(path.read_bytes())
    at = raw.find((torch.tensor([1000.5], dtype=torch.float32)).numpy().tobytes())
    assert at > 0
    raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"ckpt\.pt: checksum mismatch; this checkpoint is corrupt"):
        load_torch_file(path, "checkpoint")


def test_files_without_checksum_still_load(tmp_path):
    """Checkpoints written before the checksum and third parties' state_dicts."""
    path = tmp_path / "old.pt"
    torch.save({"backbone": {"w": torch.ones(3)}, "config": {}, "epoch": 1, "step": 2, "optimizer": {},
                "rng": {"torch": torch.get_rng_state()}}, path)
    assert load_checkpoint(path)["step"] == 2


def test_a_truncated_file_is_one_line(tmp_path):
    path = save_torch_file({"w": torch.zeros(100)}, tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.pt: not a readable checkpoint"):
        load_torch_file(path, "checkpoint")


def test_train_checkpoint_is_checksummed_and_resumes(runner, tmp_path):
    out = tmp_path / "run"
    tiny = ["--set", "data.synthetic.num_classes=60", "--set", "data.synthetic.train_per_class=4",
            "--set", "data.batch_size=32", "--set", "selection.sample_num=40", "--set", "model.mlp_hidden=16",
            "--set", "optim.epochs=1"]
    result = runner.invoke(app, ["train", "--config", CONFIG, "--mode", "hf", "--out", str(out), *tiny])
    assert result.exit_code == 0, result.output
    ckpt = out / "checkpoints" / "epoch_001.pt"
    assert CHECKSUM_KEY in torch.load(ckpt, weights_only=True)
    raw = bytearray(ckpt.read_bytes())
    weight = load_checkpoint(ckpt)["store"]["weight"]
    at = raw.find(weight[7].numpy().tobytes())
    assert at > 0
    raw[at:at + 4] = bytes(b ^ 0x01 for b in raw[at:at + 4])
    ckpt.write_bytes(bytes(raw))
    resumed = runner.invoke(app, ["train", "--resume", str(ckpt), "--set", "optim.epochs=2"])
    assert resumed.exit_code != 0 and "checksum mismatch" in resumed.output and "epoch_001.pt" in resumed.output


def test_a_checkpoint_that_cannot_be_written_is_an_output_error(tmp_path, monkeypatch):
    # torch's writer reports a full disk as a RuntimeError ("PytorchStreamWriter failed writing file")
    from dcs_cli import torchfile
    from dcs_cli.errors import OutputError

    def full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torchfile.torch, "save", full_disk)
    with pytest.raises(OutputError, match=r"ckpt\.pt: cannot write it \(.*PytorchStreamWriter.* GiB free there\)"):
        torchfile.save_torch_file({"a": 1}, tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, under any name
