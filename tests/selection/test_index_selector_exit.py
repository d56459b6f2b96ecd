"""A process that exits with an index refresh still in flight (no `selector.close()`) exits cleanly."""

import subprocess
import sys

# A background hnsw rebuild (native build threads) kept in flight at exit: the refresh builds the graph
# REPEATS times (~0.3 s), and the main thread ends 0.1 s into it, inside hnswlib's native build threads.
SCRIPT = """
import time

import torch
from dcs_cli.selection.hnsw import HnswSelector
from dcs_cli.selection.local_store import LocalStore

REPEATS, N, D = 6, 1000, 16

class SlowHnsw(HnswSelector):
    def _build(self, snapshot, seed):
        for _ in range(REPEATS if self.index is not None else 1):
            index = super()._build(snapshot, seed)
        return index

store = LocalStore(N, D, init_std=0.5)
selector = SlowHnsw(N, 16, 4, interval=1, background=True, jobs=2, rebuild_fraction=0.0)
selector.attach(store)
sel = selector.select(torch.randn(4, D), torch.arange(4))
store.push(sel.ids, torch.randn(16, D))
selector.refresh(store, 1)  # a full rebuild, in a background thread
time.sleep(0.1)
assert selector._thread is not None
print("exiting")
"""


def test_exit_waits_for_an_in_flight_refresh():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "exiting"
