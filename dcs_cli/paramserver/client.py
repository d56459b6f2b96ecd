"""`RemoteStore`: the class store of a running `dcs paramserver`, behind the `ClassStore` interface.

    store = RemoteStore("tcp://127.0.0.1:5570", "classifier", num_classes=1_000_000, dim=256)
    w, b = store.rows(ids)            # fetched over ZeroMQ (zero-copy frames)
    store.push(ids, grad_w)           # returns once every registered client has pushed for this step
    store.close()                     # leave the barrier

Creating the store creates the matrix on the server (idempotent for the same spec) and registers this
client in its barrier; a background thread sends heartbeats so slow steps (evaluation, index builds) do
not get the client dropped. Every request has a timeout; a server that does not answer, or answers with
an error, raises `ServerError` with the server's reason.

With a loopback or ipc:// address the rows of `rows()` and `push()` (up to 64 MiB each way) move through
a `/dev/shm` segment shared with the server (shm.py) instead of ZeroMQ frames; `shared_memory=False` (config
`paramserver.shared_memory: false`) keeps everything on the socket. A server that cannot map the segment
(another host behind a forwarded port, a container without the client's /dev/shm) is told once and the
client carries on with frames.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import threading

import numpy as np
import torch
import zmq

from dcs_cli.console import info
from dcs_cli.errors import ConfigError, DataError, ServerError
from dcs_cli.paramserver import shm
from dcs_cli.paramserver.auth import is_loopback
from dcs_cli.paramserver.config import MAX_MESSAGE_BYTES
from dcs_cli.paramserver.protocol import (
    FLAG_MOMENTUM,
    FLAG_SHARED,
    STATUS_ERROR,
    DType,
    Header,
    Op,
    ProtocolError,
    decode_header,
    json_frame,
    parse_json,
    row_arrays,
)
from dcs_cli.selection.store import ClassStore, OptimParams

CHUNK_BYTES = 64 << 20  # whole-matrix transfers go in pieces of this size
SHARED_MAX_BYTES = CHUNK_BYTES  # per region; larger rows()/push() calls travel as frames


class RequestTimeout(ServerError):
    """No reply in time: the request may still be served later, so nothing it refers to may be reused."""


class _Connection:
    """One DEALER socket with request/reply matching by request id and a per-request timeout."""

    def __init__(self, ctx: zmq.Context, address: str, token: bytes | None, client_id: int):
        self.ctx, self.address, self.token, self.client_id = ctx, address, token, client_id
        self.request_ids = itertools.count(1)
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        return sock

    def request(self, header: Header, frames: list = (), timeout: float = 60.0) -> tuple[Header, list]:
        header.request_id = next(self.request_ids)
        header.client_id = self.client_id
        self.sock.send_multipart([header.pack(self.token), *frames], copy=False)
        deadline_ms = int(timeout * 1000)
        while True:
            if not self.sock.poll(deadline_ms):
                # the request may still sit in the queue; a fresh socket makes sure it is never sent late
                self.sock.close()
                self.sock = self._open()
                raise RequestTimeout(
                    f"no reply from the paramserver at {self.address} within {timeout:g}s "
                    f"({Op(header.op).name}); is `dcs paramserver` running there?"
                )
            reply = self.sock.recv_multipart(copy=False)
            reply_header = self._decode(reply[0].buffer)
            if reply_header.request_id != header.request_id:
                continue  # a late answer to an earlier request that timed out
            if reply_header.status == STATUS_ERROR:
                message = parse_json(reply[1].buffer).get("error", "?") if len(reply) > 1 else "?"
                raise ServerError(f"paramserver {self.address} refused {Op(header.op).name}: {message}")
            return reply_header, reply[1:]

    def _decode(self, buf) -> Header:
        try:
            return decode_header(buf, self.token)
        except ProtocolError as exc:
            try:  # an unauthenticated error reply still explains itself (typically: our token is wrong)
                header = decode_header(buf, None)
            except ProtocolError:
                raise ServerError(f"paramserver {self.address}: unreadable reply ({exc})") from None
            if header.status != STATUS_ERROR:
                raise ServerError(
                    f"paramserver {self.address}: reply failed authentication ({exc})"
                ) from None
            return header

    def close(self) -> None:
        self.sock.close()


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", dtype).numpy())


class RemoteStore(ClassStore):
    """`RemoteStore(address, "classifier", N, d)`: rows, push and state of a server-held matrix."""

    def __init__(
        self,
        address: str,
        matrix: str = "classifier",
        num_classes: int = 0,
        dim: int = 0,
        bias: bool = False,
        init: str = "normal",
        seed: int = 0,
        params: OptimParams | None = None,
        token: bytes | str | None = None,
        timeout: float = 60.0,
        init_std: float = 0.01,
        heartbeat: bool = True,
        shared_memory: bool = True,
        catch_up: bool = False,
    ):
        if num_classes <= 0 or dim <= 0:
            raise ConfigError(f"class store needs num_classes > 0 and dim > 0, got {num_classes} and {dim}")
        self.address, self.name, self.timeout = address, matrix, timeout
        self.num_classes, self.dim, self.has_bias = num_classes, dim, bias
        self.token = token.encode() if isinstance(token, str) else token
        self.client_id = secrets.randbits(63) or 1
        self._ctx = zmq.Context()
        self._conn = _Connection(self._ctx, address, self.token, self.client_id)
        self._segment: shm.SharedSegment | None = None
        self._segment_full = False  # a larger segment could not be had: keep this one
        self._shared_ok = shared_memory and is_loopback(address) and shm.available()
        spec = {
            "name": matrix,
            "num_classes": num_classes,
            "dim": dim,
            "bias": bias,
            "init": init,
            "init_std": float(init_std),
            "seed": seed,
            "catch_up": bool(catch_up),
        }
        try:
            reply, frames = self._conn.request(
                Header(op=Op.CREATE, dtype=DType.JSON), [json_frame(spec)], timeout
            )
            self.matrix_id = reply.matrix
            reply, frames = self._call(Op.REGISTER)
            registered = parse_json(frames[0].buffer)
        except ServerError:
            self._shutdown_sockets()
            raise
        self.step = reply.step
        # the server's frame limit (older servers did not say: ZeroMQ's 1 GiB ceiling)
        self.max_frame_bytes = int(registered.get("max_frame_bytes", MAX_MESSAGE_BYTES))
        if params is not None:
            self.set_optim(params)
        self._stop = threading.Event()
        self._beat = None
        if heartbeat:
            period = max(0.05, float(registered.get("heartbeat_timeout", 30.0)) / 4)
            self._beat = threading.Thread(
                target=self._heartbeat, args=(period,), daemon=True, name="dcs-paramserver-heartbeat"
            )
            self._beat.start()

    @classmethod
    def from_config(cls, ps_cfg, matrix: str, num_classes: int, dim: int, **kwargs) -> RemoteStore:
        """From a `paramserver:` config section (address, token_file, request_timeout)."""
        from dcs_cli.paramserver.auth import read_token

        return cls(
            ps_cfg.address,
            matrix,
            num_classes,
            dim,
            token=read_token(ps_cfg.token_file),
            timeout=ps_cfg.request_timeout,
            shared_memory=ps_cfg.shared_memory,
            **kwargs,
        )

    # ------------------------------------------------------------------------------------ transport

    def _call(self, op: Op, frames: list = (), **fields) -> tuple[Header, list]:
        header = Header(op=op, matrix=self.matrix_id, **fields)
        return self._conn.request(header, frames, self.timeout)

    def _heartbeat(self, period: float) -> None:
        conn = _Connection(self._ctx, self.address, self.token, self.client_id)
        try:
            while not self._stop.wait(period):
                try:
                    conn.request(Header(op=Op.HEARTBEAT, matrix=self.matrix_id), (), timeout=period * 2)
                except ServerError:
                    pass  # the main thread's next request reports the problem with its context
        finally:
            conn.close()

    def _call_shared(self, op: Op, frames: list = (), **fields) -> tuple[Header, list]:
        """`_call` for a request whose arrays lie in the segment: after a timeout the server may still
        read or write it, so this store never uses shared memory again."""
        try:
            return self._call(op, frames, **fields)
        except RequestTimeout:
            self._segment, self._shared_ok = None, False
            raise

    def _row_specs(self, rows: int, kind: str, with_momentum: bool = False) -> list[tuple]:
        return row_arrays(kind, rows, self.dim, self.has_bias, with_momentum)

    def _shared(self, rows: int, with_momentum: bool = False) -> shm.SharedSegment | None:
        """The attached segment, sized for `rows` rows both ways (attaching a larger one first if
        needed), or None when these rows travel as frames."""
        if not self._shared_ok:
            return None
        reply = shm.span(self._row_specs(rows, "reply", with_momentum))
        request = shm.span(self._row_specs(rows, "push"))
        if max(reply, request) > SHARED_MAX_BYTES:
            return None
        seg = self._segment
        if seg is not None and seg.reply_bytes >= reply and seg.request_bytes >= request:
            return seg
        if seg is not None and self._segment_full:
            return None  # this request as frames; the segment serves the sizes it has
        if seg is not None:  # grow with headroom, so a batch a little larger next step fits too
            reply, request = max(reply, seg.reply_bytes), max(request, seg.request_bytes)
        try:
            new = shm.SharedSegment.create(reply + reply // 4, request + request // 4)
        except shm.SegmentError as exc:
            return self._cannot_grow(str(exc))
        try:
            spec = {"name": new.name, "reply_bytes": new.reply_bytes, "request_bytes": new.request_bytes}
            self._call_shared(Op.ATTACH, [json_frame(spec)], dtype=DType.JSON)
        except RequestTimeout:
            raise
        except ServerError as exc:
            return self._cannot_grow(str(exc))
        finally:
            new.unlink()  # both sides have it mapped (or the server refused): no file is left behind
        self._segment = new
        return new

    def _cannot_grow(self, why: str) -> None:
        if self._segment is None:
            return self._frames_from_now(why)
        info(f"paramserver {self.address}: shared-memory segment not grown ({why}); larger requests travel "
             "over ZeroMQ")
        self._segment_full = True
        return None

    def shared_memory_for(self, rows: int) -> bool:
        """Whether requests of `rows` rows move through shared memory (attaching the segment now if needed)."""
        return self._shared(rows) is not None

    def _frames_from_now(self, why: str) -> None:
        info(f"paramserver {self.address}: shared memory not used ({why}); rows travel over ZeroMQ")
        self._segment, self._shared_ok = None, False
        return None

    def _chunk_rows(self, arrays_per_row: int) -> int:
        return max(1, min(CHUNK_BYTES, self.max_frame_bytes) // (4 * self.dim * arrays_per_row))

    # ---------------------------------------------------------------------------------- ClassStore

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self._get(ids, with_momentum=False)
        return out["weight"], out.get("bias")

    def _get(self, ids: torch.Tensor, with_momentum: bool, bulk: bool = False) -> dict[str, torch.Tensor]:
        """Rows of `ids`; `bulk` (whole-matrix reads in chunks) always as frames: the segment stays the
        size of a training step's rows."""
        ids_np = _np(ids.reshape(-1), torch.int64)
        seg = None if bulk else self._shared(len(ids_np), with_momentum)
        flags = (FLAG_MOMENTUM if with_momentum else 0) | (FLAG_SHARED if seg else 0)
        reply, frames = (self._call_shared if seg else self._call)(
            Op.GET_ROWS, [ids_np], dtype=DType.FLOAT32, rows=len(ids_np), cols=self.dim, flags=flags
        )
        names = ["weight"] + ["momentum"] * with_momentum
        if self.has_bias:
            names += ["bias"] + ["bias_momentum"] * with_momentum
        specs = self._row_specs(len(ids_np), "reply", with_momentum)
        if reply.flags & FLAG_SHARED:  # copied out: the region is overwritten by the next request
            if seg is None:
                raise ServerError(f"paramserver {self.address}: GET_ROWS answered through shared memory unasked")
            arrays = [a.copy() for a in seg.arrays(seg.reply, specs)] if not frames else []
        else:  # frames (also the server's answer to a client it no longer knows, e.g. dropped)
            arrays = [np.frombuffer(f.buffer, dtype="<f4") for f in frames]
        if len(arrays) != len(names) or any(a.size != np.prod(s[1]) for a, s in zip(arrays, specs, strict=True)):
            via = "through shared memory" if reply.flags & FLAG_SHARED else f"with {len(frames)} frames"
            raise ServerError(
                f"paramserver {self.address}: GET_ROWS answered {via}, not {len(names)} arrays of "
                f"{len(ids_np)} rows"
            )
        return {
            name: torch.from_numpy(a.reshape(spec[1])).to(ids.device)
            for name, a, spec in zip(names, arrays, specs, strict=True)
        }

    def push(self, ids: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor | None = None) -> None:
        if tuple(grad_w.shape) != (ids.numel(), self.dim):
            raise DataError(
                f"class store push: gradient shape {tuple(grad_w.shape)} does not match "
                f"{ids.numel()} rows of dim {self.dim}"
            )
        if self.has_bias != (grad_b is not None):
            raise DataError(
                f"matrix '{self.name}' {'has' if self.has_bias else 'has no'} bias; "
                f"grad_b must {'be given' if self.has_bias else 'be None'}"
            )
        if 4 * grad_w.numel() > self.max_frame_bytes:
            raise DataError(
                f"class store push: {ids.numel()} rows of dim {self.dim} ({4 * grad_w.numel():,} bytes) exceed "
                f"the paramserver's max_frame_bytes ({self.max_frame_bytes:,}); raise paramserver.max_frame_bytes "
                "on the server or lower selection.sample_num"
            )
        ids_np = _np(ids.reshape(-1), torch.int64)
        frames = [ids_np, _np(grad_w, torch.float32)]
        if grad_b is not None:
            frames.append(_np(grad_b.reshape(-1), torch.float32))
        seg = self._shared(len(ids_np))
        if seg is not None:  # written into the request region; the server reads it there
            for dest, array in zip(seg.arrays(seg.request, self._row_specs(len(ids_np), "push")), frames,
                                   strict=True):
                np.copyto(dest, array.reshape(dest.shape))
            frames = []
        reply, _ = (self._call_shared if seg else self._call)(
            Op.PUSH, frames, dtype=DType.FLOAT32, rows=len(ids_np), cols=self.dim, step=self.step,
            flags=FLAG_SHARED if seg else 0,
        )
        self.step = reply.step

    def weights(self) -> torch.Tensor:
        chunk = self._chunk_rows(1)
        parts = [
            self._get(torch.arange(lo, min(lo + chunk, self.num_classes)), False, bulk=True)["weight"]
            for lo in range(0, self.num_classes, chunk)
        ]
        return torch.cat(parts)

    def get_optim(self) -> OptimParams:
        _, frames = self._call(Op.GET_OPTIM)
        return OptimParams(**parse_json(frames[0].buffer))

    def set_optim(self, params: OptimParams) -> None:
        self._call(Op.SET_OPTIM, [json_frame(dataclasses.asdict(params))], dtype=DType.JSON)

    def state_dict(self) -> dict:
        """Weights, momentum (and bias), the server's step and optimiser params, as CPU tensors."""
        chunk = self._chunk_rows(2)
        parts = [
            self._get(torch.arange(lo, min(lo + chunk, self.num_classes)), True, bulk=True)
            for lo in range(0, self.num_classes, chunk)
        ]
        state = {"num_classes": self.num_classes, "dim": self.dim}  # the keys LocalStore uses, plus step
        state.update({key: torch.cat([p[key] for p in parts]) for key in parts[0]})
        reply, frames = self._call(Op.GET_OPTIM)
        state["step"] = reply.step
        state["optim"] = parse_json(frames[0].buffer)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Overwrite every row, its momentum, the step and the optimiser params on the server."""
        shape = (self.num_classes, self.dim)
        if tuple(state["weight"].shape) != shape or tuple(state["momentum"].shape) != shape:
            raise DataError(
                f"class store state has weights {tuple(state['weight'].shape)}, this store is "
                f"{shape}; use the config it was saved with"
            )
        if ("bias" in state) != self.has_bias:
            raise DataError("class store state and this store disagree on the bias (head.bias)")
        chunk = self._chunk_rows(2)
        for lo in range(0, self.num_classes, chunk):
            hi = min(lo + chunk, self.num_classes)
            frames = [
                _np(torch.arange(lo, hi), torch.int64),
                _np(state["weight"][lo:hi], torch.float32),
                _np(state["momentum"][lo:hi], torch.float32),
            ]
            if self.has_bias:
                frames += [
                    _np(state["bias"][lo:hi], torch.float32),
                    _np(state["bias_momentum"][lo:hi], torch.float32),
                ]
            self._call(
                Op.SET_ROWS, frames, dtype=DType.FLOAT32, rows=hi - lo, cols=self.dim, flags=FLAG_MOMENTUM
            )
        if "optim" in state:
            self.set_optim(OptimParams(**state["optim"]))
        if "step" in state:
            reply, _ = self._call(Op.SET_STEP, step=int(state["step"]))
            self.step = reply.step

    # ------------------------------------------------------------------------------- server control

    def snapshot(self) -> str:
        """Ask the server to write its snapshot now; returns the path on the server's machine."""
        _, frames = self._call(Op.SNAPSHOT)
        return parse_json(frames[0].buffer)["path"]

    def stats(self) -> dict:
        _, frames = self._call(Op.STATS)
        return parse_json(frames[0].buffer)

    def shutdown_server(self) -> None:
        self._call(Op.SHUTDOWN)

    def close(self, unregister: bool = True) -> None:
        """Stop heartbeats and leave the barrier (so other clients do not wait for this one)."""
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None
        if unregister and self._conn is not None:
            try:
                self._conn.request(
                    Header(op=Op.UNREGISTER, matrix=self.matrix_id), (), min(self.timeout, 5.0)
                )
            except ServerError:
                pass  # the server is gone or dropped us already; nothing left to leave
        self._shutdown_sockets()

    def _shutdown_sockets(self) -> None:
        self._segment = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._ctx.term()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
