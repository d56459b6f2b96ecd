"""Seeds of a run's random streams, derived by hashing, so that no two streams share a seed.

    >>> from dcs_cli.seeds import stream_seed
    >>> stream_seed(0, "selection", 1, 0) == stream_seed(0, "selection", 0, 0)   # another epoch
    False
    >>> stream_seed(0, "selection", 0, 0) == stream_seed(0, "global", 0, 0)      # another stream, same seed
    False

The training loop reseeds each epoch's streams from (run seed, stream, epoch, rank), so a resumed run draws
what an uninterrupted one would; the selector's random fill and the tail draws derive their own from the
selection stream's seed. (An additive scheme made the tail draws of one epoch the fill of the next.)
"""

from __future__ import annotations

import hashlib


def stream_seed(seed: int, *key) -> int:
    """A 63-bit seed for the stream named by `key` (names and numbers) of a run seeded `seed`."""
    text = "/".join(str(part) for part in (seed, *key))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
