"""Review 6's findings: reply reflection, barrier drops, init leaks, snapshot checks, LR bound, connection cap."""

from __future__ import annotations

import json
import secrets
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from dcs_cli.errors import DataError, ServerError
from dcs_cli.paramserver.barrier import drop_silent
from dcs_cli.paramserver.client import RemoteStore
from dcs_cli.paramserver.config import ParamServerConfig
from dcs_cli.paramserver.connections import ConnectionBudget
from dcs_cli.paramserver.launcher import start_background
from dcs_cli.paramserver.protocol import (
    NO_AUTH,
    STATUS_ERROR,
    DType,
    Header,
    Op,
    ProtocolError,
    decode_header,
    json_frame,
)
from dcs_cli.paramserver.server import ParamServer
from dcs_cli.paramserver.snapshot import FORMAT, _checksum, read_snapshot
from dcs_cli.selection.store import OptimParams

PARAMS = OptimParams(lr=0.1, momentum=0.9, weight_decay=0.0)
TOKEN = b"a shared secret for review 6"


class _Recorder:
    """Stands in for the ROUTER socket: keeps every raw reply the server sends."""

    def __init__(self):
        self.sent: list[list[bytes]] = []

    def send_multipart(self, frames, copy=False):
        self.sent.append([bytes(f) if not isinstance(f, np.ndarray) else f.tobytes() for f in frames])


def _frames(identity: bytes, header: Header, *payload, token=None) -> list[zmq.Frame]:
    return [zmq.Frame(identity), zmq.Frame(header.pack(token)), *(zmq.Frame(bytes(p)) for p in payload)]


def _server(token=None) -> ParamServer:
    server = ParamServer(ParamServerConfig(), PARAMS, token)
    server.sock = _Recorder()
    return server


# ------------------------------------------------------------------------------- 1. reflection


def test_a_reply_never_authenticates_as_a_request():
    reply = Header(op=Op.SHUTDOWN, request_id=5).pack(TOKEN, reply=True)
    assert decode_header(reply, TOKEN, reply=True).request_id == 5
    with pytest.raises(ProtocolError, match="authentication"):
        decode_header(reply, TOKEN)
    error_request = Header(op=Op.STATS, status=STATUS_ERROR).pack(TOKEN)
    with pytest.raises(ProtocolError, match="status 0"):
        decode_header(error_request, TOKEN)


def test_the_error_reply_to_a_forged_header_carries_no_mac_and_cannot_be_replayed():
    server = _server(TOKEN)
    forged = Header(op=Op.SHUTDOWN, request_id=15)
    server._handle(_frames(b"x", forged))  # no token: refused
    identity, reply, *_ = server.sock.sent[-1]
    assert reply[-16:] == NO_AUTH and decode_header(reply, None, reply=True).status == STATUS_ERROR
    for op in (Op.SHUTDOWN, Op.REGISTER):  # replayed as a request: refused, nothing done
        server._handle([zmq.Frame(b"x"), zmq.Frame(Header(op=op, request_id=16).pack(None))])
        server._handle([zmq.Frame(b"x"), zmq.Frame(reply)])
    assert not server.stop_requested and not server.clients
    assert all(decode_header(r[1], None, reply=True).status == STATUS_ERROR for r in server.sock.sent)


def test_reflected_replies_are_refused_by_a_real_server(tmp_path):
    token_file = tmp_path / "tok"
    token_file.write_text(secrets.token_hex(16))
    srv = start_background("tcp://127.0.0.1:*", token_file=str(token_file))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        token = token_file.read_text().strip().encode()
        with RemoteStore(srv.address, "classifier", 10, 4, token=token, heartbeat=False) as legit:
            s.connect(srv.address)
            for op in (Op.SHUTDOWN, Op.REGISTER, Op.SET_OPTIM):
                s.send_multipart([Header(op=op, request_id=1).pack(None)])
                reflected = s.recv_multipart()[0]
                s.send_multipart([reflected, json_frame({"lr": 1e30, "momentum": 0.0, "weight_decay": 0.0})])
                assert decode_header(s.recv_multipart()[0], None, reply=True).status == STATUS_ERROR
            assert srv.running()
            assert legit.get_optim().lr != 1e30 and legit.stats()["matrices"][0]["members"] == 1
    finally:
        s.close()
        ctx.term()
        assert srv.stop() == 0, srv.log()


# --------------------------------------------------------------------- 2. drop after the barrier


def test_a_client_answered_by_the_barrier_is_not_dropped_for_the_time_it_waited():
    server = _server()
    server._handle(_frames(b"a", Header(op=Op.CREATE, dtype=DType.JSON, client_id=1),
                           json_frame({"name": "m", "num_classes": 10, "dim": 2})))
    for client, identity in ((1, b"a"), (2, b"b")):
        server._handle(_frames(identity, Header(op=Op.REGISTER, client_id=client)))
    ids, grad = np.array([1], dtype="<i8"), np.ones((1, 2), dtype="<f4")
    push = Header(op=Op.PUSH, client_id=1, rows=1, cols=2, dtype=DType.FLOAT32)
    server._handle(_frames(b"a", push, ids.tobytes(), grad.tobytes()))
    server.clients[1].last_seen -= 10 * server.cfg.heartbeat_timeout  # it waited long in the barrier
    push.client_id = 2
    server._handle(_frames(b"b", push, ids.tobytes(), grad.tobytes()))
    assert server.matrices[0].step == 1
    drop_silent(server, time.monotonic() + 1.0)
    assert server.matrices[0].members == {1, 2}


# -------------------------------------------------------------------------- 3. init cleanup


def test_a_failure_after_register_leaves_no_member_and_no_thread(server):
    threads = threading.active_count()
    bad = OptimParams(lr=0.1, momentum=1.5, weight_decay=0.0)
    with pytest.raises(ServerError, match="SET_OPTIM"):
        RemoteStore(server.address, "init-cleanup", 10, 4, params=bad)
    assert threading.active_count() == threads
    with RemoteStore(server.address, "init-cleanup", 10, 4, heartbeat=False) as other:
        members = {m["name"]: m["members"] for m in other.stats()["matrices"]}
        assert members["init-cleanup"] == 1


# ------------------------------------------------------------------------------ 4. snapshots


def _write(path, tensors, entries):
    meta = json.dumps(entries)
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": "2", "matrices": meta,
                                            "sha256": _checksum(meta, tensors)})


OPT = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}


@pytest.mark.parametrize(
    "tensors, entry, message",
    [
        ({"0/weight": torch.zeros(10, 4, dtype=torch.float64), "0/momentum": torch.zeros(10, 4)},
         {"id": 0}, "entry 0 .*'0/weight' is torch.float64"),
        ({"0/weight": torch.zeros(10, 4), "0/momentum": torch.zeros(10, 4), "0/bias": torch.zeros(3),
          "0/bias_momentum": torch.zeros(10)}, {"id": 0, "bias": True}, "entry 0 .*'0/bias' is .*\\(3,\\)"),
        ({"0/weight": torch.zeros(10, 4), "0/momentum": torch.zeros(10, 4)}, {"id": 0, "bias": True},
         "entry 0 .*'0/bias' is missing"),
        ({"5/weight": torch.zeros(10, 4), "5/momentum": torch.zeros(10, 4)}, {"id": 5}, "entry 0 .*id 5, expected 0"),
    ],
)
def test_snapshots_with_wrong_dtypes_shapes_or_ids_are_refused(tmp_path, tensors, entry, message):
    spec = {"name": "c", "num_classes": 10, "dim": 4, "bias": entry.get("bias", False)}
    _write(tmp_path / "bad.safetensors", tensors, [{"id": entry["id"], "spec": spec, "step": 0, "optim": OPT}])
    with pytest.raises(DataError, match=message) as info:
        read_snapshot(tmp_path / "bad.safetensors")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- 5. optimiser bounds


def test_set_optim_refuses_an_absurd_lr(server):
    with RemoteStore(server.address, "huge-lr", 10, 4, heartbeat=False) as store:
        with pytest.raises(ServerError, match="lr <= 1e"):
            store.set_optim(OptimParams(lr=1e30, momentum=0.0, weight_decay=0.0))


# ----------------------------------------------------------------------------- 6. connections


def test_the_default_connection_cap_fits_64_clients_and_says_what_to_raise(monkeypatch):
    cfg = ParamServerConfig()
    assert cfg.max_inflight_bytes // cfg.max_frame_bytes >= 2 * 64
    warnings = []
    monkeypatch.setattr("dcs_cli.paramserver.connections.warn", warnings.append)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    budget = ConnectionBudget(sock, cfg.max_inflight_bytes, cfg.max_frame_bytes)
    try:
        budget._refuse(-1)
    finally:
        budget.close()
        sock.close(linger=0)
        ctx.term()
    assert "paramserver.max_inflight_bytes=" in warnings[0]
