"""A client's shared-memory segment: which requests use it, growing and ATTACHing it, falling back to frames.

With a loopback or ipc:// address (and `paramserver.shared_memory` on), the rows of `rows()` and
`push()` move through a `/dev/shm` segment (shm.py) that the server maps too. The segment is created and
ATTACHed for the first request and replaced by a larger one (with a quarter of headroom) when a request
does not fit; a request that needs more than `SHARED_MAX_BYTES` in either region travels as frames. A
server that cannot map the segment (another host behind a forwarded port, a container without the
client's /dev/shm) is told once and the client carries on with frames; when only a larger segment cannot
be had, the one attached keeps serving the sizes it fits.
"""

from __future__ import annotations

from collections.abc import Callable

from dcs_cli.console import info
from dcs_cli.errors import ServerError
from dcs_cli.paramserver import shm
from dcs_cli.paramserver.auth import is_loopback
from dcs_cli.paramserver.client_socket import RequestTimeout
from dcs_cli.paramserver.protocol import row_arrays

SHARED_MAX_BYTES = 64 << 20  # per region; larger rows()/push() calls travel as frames


class ClientSegment:
    """`ClientSegment(address, dim, bias, wanted)`; `.for_rows(rows, with_momentum, attach)`: the segment
    for a request of `rows` rows, or None when it travels as frames."""

    def __init__(self, address: str, dim: int, bias: bool, wanted: bool):
        self.address, self.dim, self.bias = address, dim, bias
        self.enabled = wanted and is_loopback(address) and shm.available()
        self.segment: shm.SharedSegment | None = None
        self.full = False  # a larger segment could not be had: keep this one

    def _specs(self, rows: int, kind: str, with_momentum: bool = False) -> list[tuple]:
        return row_arrays(kind, rows, self.dim, self.bias, with_momentum)

    def for_rows(
        self, rows: int, with_momentum: bool, attach: Callable[[shm.SharedSegment], object]
    ) -> shm.SharedSegment | None:
        """The attached segment, sized for `rows` rows both ways (a larger one is created and handed to
        `attach`, which sends ATTACH, first if needed), or None when these rows travel as frames."""
        if not self.enabled:
            return None
        reply = shm.span(self._specs(rows, "reply", with_momentum))
        request = shm.span(self._specs(rows, "push"))
        if max(reply, request) > SHARED_MAX_BYTES:
            return None
        seg = self.segment
        if seg is not None and seg.reply_bytes >= reply and seg.request_bytes >= request:
            return seg
        if seg is not None and self.full:
            return None  # this request as frames; the segment serves the sizes it has
        if seg is not None:  # grow with headroom, so a batch a little larger next step fits too
            reply, request = max(reply, seg.reply_bytes), max(request, seg.request_bytes)
        try:
            new = shm.SharedSegment.create(reply + reply // 4, request + request // 4)
        except shm.SegmentError as exc:
            return self._cannot_grow(str(exc))
        try:
            attach(new)
        except RequestTimeout:
            raise
        except ServerError as exc:
            return self._cannot_grow(str(exc))
        finally:
            new.unlink()  # both sides have it mapped (or the server refused): no file is left behind
        self.segment = new
        return new

    def _cannot_grow(self, why: str) -> None:
        if self.segment is None:
            return self._frames_from_now(why)
        info(f"paramserver {self.address}: shared-memory segment not grown ({why}); larger requests travel "
             "over ZeroMQ")
        self.full = True
        return None

    def _frames_from_now(self, why: str) -> None:
        info(f"paramserver {self.address}: shared memory not used ({why}); rows travel over ZeroMQ")
        self.abandon()
        return None

    def abandon(self) -> None:
        """Never use shared memory again (after a timeout the server may still read or write the segment)."""
        self.segment, self.enabled = None, False
