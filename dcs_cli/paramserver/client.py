"""`RemoteStore`: the class store of a running `dcs paramserver`, behind the `ClassStore` interface.

`RemoteStore(address, "classifier", num_classes, dim)` creates the matrix on the server (idempotent for
the same spec) and registers this client in its barrier; `rows(ids)` fetches rows, `push(ids, grad_w)`
returns once every registered client has pushed for this step, and `close()` leaves the barrier. A
`Heartbeat` thread (heartbeat.py) keeps the client registered through slow steps (evaluation, index
builds). Every request has a timeout (client_socket.py); a server that does not answer, or answers with
an error, raises `ServerError` with the server's reason.

With a loopback or ipc:// address the rows of `rows()` and `push()` (up to 64 MiB each way) move through
a `/dev/shm` segment shared with the server (client_segment.py) instead of ZeroMQ frames;
`shared_memory=False` (config `paramserver.shared_memory: false`) keeps everything on the socket.
Whole-matrix reads and writes go in chunks (transfer.py).
"""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np
import torch
import zmq

from dcs_cli.errors import ConfigError, DataError, ServerError
from dcs_cli.paramserver import shm
from dcs_cli.paramserver.client_segment import ClientSegment
from dcs_cli.paramserver.client_socket import ClientSocket, RequestTimeout
from dcs_cli.paramserver.config import MAX_MESSAGE_BYTES
from dcs_cli.paramserver.heartbeat import Heartbeat
from dcs_cli.paramserver.protocol import (
    FLAG_CURRENT,
    FLAG_MOMENTUM,
    FLAG_SHARED,
    DType,
    Header,
    Op,
    json_frame,
    parse_json,
    row_arrays,
)
from dcs_cli.paramserver.transfer import chunk_rows, read_in_chunks, row_ranges, state_frames, wire_array
from dcs_cli.selection.store import ClassStore, OptimParams


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
        self._conn = ClientSocket(self._ctx, address, self.token, self.client_id)
        self._shared = ClientSegment(address, dim, bias, wanted=shared_memory)
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
        self._beat = None
        try:
            reply, frames = self._conn.request(
                Header(op=Op.CREATE, dtype=DType.JSON), [json_frame(spec)], timeout
            )
            self.matrix_id = reply.matrix
        except BaseException:
            self._shutdown_sockets()
            raise
        try:
            reply, frames = self._call(Op.REGISTER)
            registered = parse_json(frames[0].buffer)
            self.step = reply.step
            # the server's frame limit (older servers did not say: ZeroMQ's 1 GiB ceiling)
            self.max_frame_bytes = int(registered.get("max_frame_bytes", MAX_MESSAGE_BYTES))
            if params is not None:
                self.set_optim(params)
            if heartbeat:
                period = max(0.05, float(registered.get("heartbeat_timeout", 30.0)) / 4)
                self._beat = Heartbeat(self._ctx, address, self.token, self.client_id, self.matrix_id, period)
        except BaseException:
            # REGISTER may have been served (even if its reply never came): leave the barrier, so the
            # other clients do not wait for a member that never pushes, and end the context
            self.close(unregister=True)
            raise

    # ------------------------------------------------------------------------------------ transport

    def _call(self, op: Op, frames: list = (), **fields) -> tuple[Header, list]:
        header = Header(op=op, matrix=self.matrix_id, **fields)
        return self._conn.request(header, frames, self.timeout)

    def _call_shared(self, op: Op, frames: list = (), **fields) -> tuple[Header, list]:
        """`_call` for a request whose arrays lie in the segment: after a timeout the server may still
        read or write it, so this store never uses shared memory again."""
        try:
            return self._call(op, frames, **fields)
        except RequestTimeout:
            self._shared.abandon()
            raise

    def _segment_for(self, rows: int, with_momentum: bool = False) -> shm.SharedSegment | None:
        """The segment for a request of `rows` rows (attached now if needed), or None: frames."""
        return self._shared.for_rows(rows, with_momentum, self._attach)

    def _attach(self, segment: shm.SharedSegment) -> None:
        spec = {"name": segment.name, "reply_bytes": segment.reply_bytes, "request_bytes": segment.request_bytes}
        self._call_shared(Op.ATTACH, [json_frame(spec)], dtype=DType.JSON)

    def shared_memory_for(self, rows: int) -> bool:
        """Whether requests of `rows` rows move through shared memory (attaching the segment now if needed)."""
        return self._segment_for(rows) is not None

    # ---------------------------------------------------------------------------------- ClassStore

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self._get(ids, with_momentum=False)
        return out["weight"], out.get("bias")

    def current_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rows`, with the rows that sat out steps caught up by the server first (catch_up matrices)."""
        out = self._get(ids, with_momentum=False, current=True)
        return out["weight"], out.get("bias")

    def _get(self, ids: torch.Tensor, with_momentum: bool, bulk: bool = False,
             current: bool = False) -> dict[str, torch.Tensor]:
        """Rows of `ids`; `bulk` (whole-matrix reads in chunks) always as frames: the segment stays the
        size of a training step's rows."""
        ids_np = wire_array(ids.reshape(-1), torch.int64)
        seg = None if bulk else self._segment_for(len(ids_np), with_momentum)
        flags = (FLAG_MOMENTUM if with_momentum else 0) | (FLAG_SHARED if seg else 0) | (FLAG_CURRENT if current else 0)
        reply, frames = (self._call_shared if seg else self._call)(
            Op.GET_ROWS, [ids_np], dtype=DType.FLOAT32, rows=len(ids_np), cols=self.dim, flags=flags
        )
        names = ["weight"] + ["momentum"] * with_momentum
        if self.has_bias:
            names += ["bias"] + ["bias_momentum"] * with_momentum
        specs = row_arrays("reply", len(ids_np), self.dim, self.has_bias, with_momentum)
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
        ids_np = wire_array(ids.reshape(-1), torch.int64)
        frames = [ids_np, wire_array(grad_w, torch.float32)]
        if grad_b is not None:
            frames.append(wire_array(grad_b.reshape(-1), torch.float32))
        seg = self._segment_for(len(ids_np))
        if seg is not None:  # written into the request region; the server reads it there
            specs = row_arrays("push", len(ids_np), self.dim, self.has_bias)
            for dest, array in zip(seg.arrays(seg.request, specs), frames, strict=True):
                np.copyto(dest, array.reshape(dest.shape))
            frames = []
        reply, _ = (self._call_shared if seg else self._call)(
            Op.PUSH, frames, dtype=DType.FLOAT32, rows=len(ids_np), cols=self.dim, step=self.step,
            flags=FLAG_SHARED if seg else 0,
        )
        self.step = reply.step

    def weights(self) -> torch.Tensor:
        """Every row as of the present step (a catch_up matrix catches the rows that sat out steps up first:
        what validation, checkpoints and index refreshes need, so `settle` has nothing left to do)."""
        chunk = chunk_rows(self.dim, 1, self.max_frame_bytes)
        return read_in_chunks(self.num_classes, chunk,
                              lambda ids: self._get(ids, False, bulk=True, current=True))["weight"]

    def get_optim(self) -> OptimParams:
        _, frames = self._call(Op.GET_OPTIM)
        return OptimParams(**parse_json(frames[0].buffer))

    def set_optim(self, params: OptimParams) -> None:
        self._call(Op.SET_OPTIM, [json_frame(dataclasses.asdict(params))], dtype=DType.JSON)

    def state_dict(self) -> dict:
        """Weights, momentum (and bias) as of the present step (rows caught up first, as `weights`), the
        server's step and optimiser params, as CPU tensors."""
        chunk = chunk_rows(self.dim, 2, self.max_frame_bytes)
        state = {"num_classes": self.num_classes, "dim": self.dim}  # the keys LocalStore uses, plus step
        state.update(read_in_chunks(self.num_classes, chunk,
                                    lambda ids: self._get(ids, True, bulk=True, current=True)))
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
        for lo, hi in row_ranges(self.num_classes, chunk_rows(self.dim, 2, self.max_frame_bytes)):
            self._call(
                Op.SET_ROWS, state_frames(state, lo, hi, self.has_bias), dtype=DType.FLOAT32, rows=hi - lo,
                cols=self.dim, flags=FLAG_MOMENTUM,
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
            self._beat.stop()
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
        self._shared.segment = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._ctx.term()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
