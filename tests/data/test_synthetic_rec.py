import numpy as np

from dcs_cli.data.binfile import read_bin
from dcs_cli.data.images import decode_rgb
from dcs_cli.data.layout import read_table
from dcs_cli.data.synthetic_rec import write_synthetic_rec


def test_layout_and_determinism(tmp_path):
    info = write_synthetic_rec(tmp_path / "a", 5, 4, image_size=32, seed=3, pairs=6)
    write_synthetic_rec(tmp_path / "b", 5, 4, image_size=32, seed=3, pairs=6)
    write_synthetic_rec(tmp_path / "c", 5, 4, image_size=32, seed=4)
    assert info["images"] == 20 and info["pairs"] == 6
    table = read_table(tmp_path / "a")
    assert table.layout == "insightface" and len(table) == 20 and table.num_classes == 5
    assert np.bincount(table.labels).tolist() == [4] * 5
    assert decode_rgb(table.payload(0)).shape == (32, 32, 3)
    for name in ("train.rec", "train.idx", "pairs.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.rec").read_bytes() != (tmp_path / "c" / "train.rec").read_bytes()
    images, issame = read_bin(tmp_path / "a" / "pairs.bin")
    assert len(images) == 12 and issame.tolist() == [True, False] * 3


def test_identities_are_separable(tmp_path):
    """Even raw pixels verify the held-out pairs far above chance: the data are learnable."""
    write_synthetic_rec(tmp_path, 20, 2, image_size=32, seed=0, pairs=200)
    images, issame = read_bin(tmp_path / "pairs.bin")
    x = np.stack([decode_rgb(b).astype(np.float32).ravel() for b in images])
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = (x[0::2] * x[1::2]).sum(axis=1)
    threshold = np.median(sim)
    accuracy = ((sim > threshold) == issame).mean()
    assert accuracy > 0.8, accuracy
    # every image differs from every other (per-image jitter)
    assert len({bytes(b) for b in images}) == len(images)


def _pixel_similarity(images) -> np.ndarray:
    x = np.stack([decode_rgb(b).astype(np.float32).ravel() for b in images])
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x[0::2] * x[1::2]).sum(axis=1)


def test_family_pairs_are_the_look_alikes(tmp_path):
    """The summary names the family-mate pairs; they are different identities that look far more alike than
    the other different pairs (the hard negatives verification must tell apart)."""
    info = write_synthetic_rec(tmp_path, 10, 1, image_size=32, seed=0, pairs=200, family_size=5, held_out=40)
    images, issame = read_bin(tmp_path / "pairs.bin")
    family = np.zeros(len(issame), dtype=bool)
    family[info["family_pairs"]] = True
    assert family.sum() == 50 and not issame[family].any()
    sim = _pixel_similarity(images)
    other = ~issame & ~family
    assert sim[family].mean() > sim[other].mean() + 0.08, (sim[family].mean(), sim[other].mean())
    assert write_synthetic_rec(tmp_path / "plain", 4, 1, image_size=16, pairs=8)["family_pairs"] == []
