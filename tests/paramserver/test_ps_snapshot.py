import pytest
import torch

from dcs_cli.errors import DataError
from dcs_cli.paramserver.matrix import MatrixSpec, ServedMatrix
from dcs_cli.paramserver.snapshot import read_snapshot, write_snapshot
from dcs_cli.selection.store import OptimParams


def _matrices():
    a = ServedMatrix(0, MatrixSpec("a", 30, 4, bias=True, seed=2), OptimParams(0.5, 0.9, 1e-3), step=7)
    a.momentum.normal_()
    a.bias_momentum.normal_()
    b = ServedMatrix(1, MatrixSpec("b", 10, 3, init="uniform"), OptimParams(0.1, 0.0, 0.0), step=2)
    return [a, b]


def test_roundtrip_keeps_everything(tmp_path):
    path = write_snapshot(tmp_path, _matrices())
    assert [p.name for p in tmp_path.iterdir()] == ["paramserver.safetensors"]  # no temp file left
    for old, new in zip(_matrices(), read_snapshot(path), strict=True):
        assert new.spec == old.spec and new.step == old.step and new.params == old.params
        assert new.matrix_id == old.matrix_id
        assert torch.equal(new.weight, old.weight)
    assert read_snapshot(path)[0].bias is not None and read_snapshot(path)[1].bias is None


def test_momentum_roundtrip_exact(tmp_path):
    mats = _matrices()
    path = write_snapshot(tmp_path, mats)
    back = read_snapshot(path)
    assert torch.equal(back[0].momentum, mats[0].momentum)
    assert torch.equal(back[0].bias_momentum, mats[0].bias_momentum)


def test_corrupt_truncated_and_missing_files_are_refused(tmp_path):
    path = write_snapshot(tmp_path, _matrices())
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    data[-5] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        read_snapshot(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_snapshot(truncated)
    with pytest.raises(DataError, match="not found"):
        read_snapshot(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(DataError, match="not a dcs-paramserver-snapshot"):
        read_snapshot(other)
