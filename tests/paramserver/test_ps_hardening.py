"""What a hostile client on this host can and cannot do to a parameter server (issue #13's findings)."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from dcs_cli.errors import DataError, ServerError
from dcs_cli.paramserver.client import RemoteStore
from dcs_cli.paramserver.config import ParamServerConfig
from dcs_cli.paramserver.launcher import start_background
from dcs_cli.paramserver.protocol import STATUS_ERROR, DType, Header, Op, decode_header, json_frame
from dcs_cli.paramserver.server import ParamServer
from dcs_cli.paramserver.snapshot import read_snapshot
from dcs_cli.selection.row_update import sgd_rows_
from dcs_cli.selection.store import OptimParams

PARAMS = OptimParams(lr=0.1, momentum=0.9, weight_decay=0.0)
ACCEPTED_NAMES = ["../../etc/passwd", "名前-αβ", "a/weight", "1/weight", "x" * 200, "quote\"'; DROP --", " "]
REFUSED_NAMES = ["\ud800", "\x1b[31mred", "", "x" * 201, "line\nbreak", "tab\tname"]


def test_hostile_names_are_refused_and_sigterm_snapshots_every_matrix(tmp_path):
    snaps = tmp_path / "snaps"
    srv = start_background(snapshot_dir=str(snaps))
    try:
        expected = {}
        for i, name in enumerate(ACCEPTED_NAMES):
            with RemoteStore(srv.address, name, 20 + i, 4, seed=i, params=PARAMS) as store:
                store.push(torch.tensor([1, 3]), torch.ones(2, 4))
                expected[name] = store.weights().clone()
        for name in REFUSED_NAMES:
            with pytest.raises(ServerError, match="CREATE: name"):
                RemoteStore(srv.address, name, 10, 4)
        assert srv.stop() == 0, srv.log()
    finally:
        srv.kill()
    matrices = {m.spec.name: m for m in read_snapshot(snaps / "paramserver.safetensors")}
    assert set(matrices) == set(ACCEPTED_NAMES)
    for name, weight in expected.items():
        assert torch.equal(matrices[name].weight, weight) and matrices[name].step == 1


def test_version_1_snapshots_still_load(tmp_path):
    from safetensors.torch import save_file

    from dcs_cli.paramserver import snapshot

    meta = json.dumps([{"id": 0, "spec": {"name": "clf", "num_classes": 3, "dim": 2, "bias": False,
                                         "init": "normal", "init_std": 0.01, "seed": 0},
                        "step": 5, "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}}])
    tensors = {"clf/weight": torch.ones(3, 2), "clf/momentum": torch.zeros(3, 2)}
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"format": snapshot.FORMAT, "format_version": "1", "matrices": meta,
                                            "sha256": snapshot._checksum(meta, tensors)})
    (m,) = read_snapshot(path)
    assert m.spec.name == "clf" and m.step == 5 and torch.equal(m.weight, torch.ones(3, 2))


def test_set_step_is_bounded_and_the_server_keeps_answering(server):
    with RemoteStore(server.address, "huge-step", 10, 4, params=PARAMS) as store:
        for step in (2**63 - 1, 2**62, -1):
            with pytest.raises(ServerError, match="SET_STEP: step .* out of range"):
                store._call(Op.SET_STEP, step=step)
        store._call(Op.SET_STEP, step=2**62 - 1)
        store.step = 2**62 - 1
        store.push(torch.tensor([2]), torch.ones(1, 4))
        assert store.step == 2**62
        store.rows(torch.tensor([2]))  # GET_ROWS and REGISTER still answer
        store._call(Op.REGISTER)


class _Recorder:
    """Stands in for the ROUTER socket: keeps every reply the server sends."""

    def __init__(self):
        self.sent: list[tuple[bytes, Header]] = []

    def send_multipart(self, frames, copy=False):
        self.sent.append((frames[0], decode_header(frames[1], None, reply=True)))


def _frames(identity: bytes, header: Header, *payload) -> list[zmq.Frame]:
    return [zmq.Frame(identity), zmq.Frame(header.pack(None)), *(zmq.Frame(bytes(p)) for p in payload)]


def test_a_failing_update_answers_every_client_held_in_the_barrier(monkeypatch):
    server = ParamServer(ParamServerConfig(), PARAMS, None)
    server.sock = _Recorder()
    spec = json_frame({"name": "m", "num_classes": 10, "dim": 2})
    server._handle(_frames(b"a", Header(op=Op.CREATE, dtype=DType.JSON, client_id=1), spec))
    for client in (1, 2):
        server._handle(_frames(b"ab"[client - 1:client], Header(op=Op.REGISTER, client_id=client)))
    m = server.matrices[0]

    def broken():
        raise RuntimeError("update failed")

    monkeypatch.setattr(m, "apply", broken)
    server.sock.sent.clear()
    ids, grad = np.array([1], dtype="<i8"), np.ones((1, 2), dtype="<f4")
    for client, identity in ((1, b"a"), (2, b"b")):
        push = Header(op=Op.PUSH, client_id=client, rows=1, cols=2, dtype=DType.FLOAT32, request_id=client)
        server._handle(_frames(identity, push, ids.tobytes(), grad.tobytes()))
    answered = {identity: h for identity, h in server.sock.sent}
    assert set(answered) == {b"a", b"b"}  # the first pusher is not left waiting
    assert all(h.status == STATUS_ERROR for h in answered.values())
    assert not m.pending and not m.waiters


def test_shared_memory_is_not_trusted_after_the_check(server):
    n, d = 50, 4
    ids = torch.tensor([3, 7, 11])
    with RemoteStore(server.address, "shm-rewrite-a", n, d, params=PARAMS) as a, \
            RemoteStore(server.address, "shm-rewrite-a", n, d) as b:
        start = a.weights().clone()
        a.rows(ids)
        segment = a._shared.segment
        assert segment is not None
        segment.reply[:] = np.frombuffer(np.full(len(segment.reply) // 4, np.nan, "<f4").tobytes(), np.uint8)
        grad = torch.ones(3, d)

        def rewrite_after_push():
            deadline = time.monotonic() + 10
            while not b.stats()["matrices"][a.matrix_id]["pending"] and time.monotonic() < deadline:
                time.sleep(0.01)
            request = a._shared.segment.request
            request[:] = np.frombuffer(np.full(len(request) // 4, 1e30, "<f4").tobytes(), np.uint8)
            b.push(ids, grad)

        helper = threading.Thread(target=rewrite_after_push)
        helper.start()
        a.push(ids, grad)  # held until b pushes; meanwhile its request region is overwritten
        helper.join(10)
        w, mom = start.clone(), torch.zeros(n, d)
        sgd_rows_(w, mom, ids, 2 * grad, PARAMS)
        got = a.weights()
        assert torch.isfinite(got).all()
        assert torch.equal(got, w)


def test_connections_beyond_the_inflight_cap_are_closed_and_big_frames_refused(tmp_path):
    config = tmp_path / "ps.yaml"
    config.write_text("paramserver:\n  max_frame_bytes: 1048576\n  max_inflight_bytes: 4194304\n")
    srv = start_background(config=str(config))
    host, port = srv.address.rsplit("/", 1)[1].rsplit(":", 1)
    raw = []
    try:
        for _ in range(6):
            raw.append(socket.create_connection((host, int(port)), timeout=5))
            time.sleep(0.05)
        closed = []
        for sock in raw:
            sock.settimeout(1.5)
            try:
                while chunk := sock.recv(4096):
                    del chunk
                closed.append(True)
            except TimeoutError:
                closed.append(False)
            except ConnectionResetError:
                closed.append(True)
        assert closed == [False] * 4 + [True] * 2
        for sock in raw:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the freed slots are reused
            try:
                with RemoteStore(srv.address, "capped", 2000, 256, timeout=2) as store:
                    assert store.max_frame_bytes == 1 << 20
                    with pytest.raises(DataError, match="max_frame_bytes"):
                        store.push(torch.arange(1100), torch.zeros(1100, 256))
                    store.push(torch.arange(1000), torch.zeros(1000, 256))
                    assert store.step == 1 and store.weights().shape == (2000, 256)  # read in 1 MiB chunks
                break
            except ServerError:
                if time.monotonic() > deadline:
                    raise
        assert srv.running()
    finally:
        for sock in raw:
            sock.close()
        assert srv.stop() == 0, srv.log()


def test_deeply_nested_json_is_a_protocol_error(server):
    with RemoteStore(server.address, "nest", 10, 2) as store:
        deep = b'{"name":' + b"[" * 30000 + b"]" * 30000 + b"}"
        with pytest.raises(ServerError, match="nests too deeply"):
            store._conn.request(Header(op=Op.CREATE, dtype=DType.JSON), [deep], 10)
        assert store.stats()["requests"] > 0


def test_fuzz_every_request_is_answered_and_a_reference_matrix_stays_bit_identical(server):
    """3,000 seeded hostile messages over every op; the reference matrix (dim 8) must not change."""
    reference = RemoteStore(server.address, "fuzz-reference", 64, 8, seed=5, params=PARAMS)
    playground = RemoteStore(server.address, "fuzz-playground", 40, 5, params=PARAMS)
    reference.push(torch.tensor([1, 2]), torch.ones(2, 8))  # non-zero momentum to watch too
    before = reference.state_dict()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    rng = np.random.default_rng(13)
    ops = [int(op) for op in Op if op != Op.SHUTDOWN]
    names = ACCEPTED_NAMES + REFUSED_NAMES

    def create_spec() -> bytes:
        choice = int(rng.integers(0, 5))
        if choice == 0:
            return json_frame({"name": names[int(rng.integers(0, len(names)))], "num_classes": 3, "dim": 2})
        if choice == 1:
            depth = int(rng.integers(1, 20000))
            return b'{"name":' + b"[" * depth + b"]" * depth + b"}"
        if choice == 2:
            return json_frame({"name": "x", "num_classes": int(rng.integers(-2**62, 2**62)), "dim": True})
        if choice == 3:
            return rng.bytes(int(rng.integers(0, 100)))
        return json_frame({"name": "fuzz-playground", "num_classes": 40, "dim": 5, "seed": -1})

    def message() -> list[bytes]:
        op = ops[int(rng.integers(0, len(ops)))]
        header = Header(op=op, matrix=playground.matrix_id if rng.random() < 0.8 else int(rng.integers(0, 2**32)),
                        client_id=int(rng.integers(1, 2**63)), step=int(rng.integers(-2**63, 2**63)),
                        rows=int(rng.integers(0, 4)), cols=5 if rng.random() < 0.7 else int(rng.integers(0, 2**20)),
                        dtype=int(rng.integers(0, 4)), flags=int(rng.integers(0, 4)))
        rows = max(header.rows, 1)
        if op == Op.CREATE:
            frames = [create_spec()]
        elif op in (Op.SET_OPTIM, Op.ATTACH):
            frames = [json_frame({"lr": float(rng.normal()), "momentum": 2.0, "weight_decay": -1,
                                  "name": "dcs-ps-" + "0" * 32, "reply_bytes": 64, "request_bytes": -64})]
        else:
            ids = rng.integers(-5, 70, rows).astype("<i8")
            values = rng.normal(size=(rows, 5)).astype("<f4")
            if rng.random() < 0.2:
                values[0, 0] = np.nan
            frames = [ids.tobytes(), values.tobytes(), values[:, 0].tobytes()][: int(rng.integers(0, 4))]
        msg = [header.pack(None), *frames]
        if rng.random() < 0.3:  # flip a few bytes anywhere
            part = int(rng.integers(0, len(msg)))
            raw = bytearray(msg[part])
            for _ in range(int(rng.integers(1, 4))):
                if raw:
                    raw[int(rng.integers(0, len(raw)))] ^= int(rng.integers(1, 256))
            msg[part] = bytes(raw)
        return msg

    start = time.monotonic()
    try:
        for i in range(3000):
            sock.send_multipart(message())
            assert sock.poll(10_000), f"no reply to fuzz message {i}"
            sock.recv_multipart()
        after = reference.state_dict()
        assert torch.equal(after["weight"], before["weight"]) and torch.equal(after["momentum"], before["momentum"])
        assert server.running()
        assert time.monotonic() - start < 30
    finally:
        sock.close()
        ctx.term()
        reference.close()
        playground.close()
