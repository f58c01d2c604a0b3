"""Raw peers that speak either packer, for tests of the server's network thread."""

from __future__ import annotations

import time
from typing import Any, List, Optional, Tuple

from sente_lite import Server
from sente_lite.wire import packers
from sente_lite.wire import protocol as p
from sente_lite.testing.abuse import OP_BINARY, OP_CLOSE, OP_TEXT, RawPeer, close_code
from support import WAIT_S


class PackedPeer:
    """A :class:`RawPeer` upgraded with ``packer`` (``json`` or ``msgpack``): sends
    frames and reads them decoded in that packer."""

    def __init__(self, srv: Server, packer: str = packers.JSON, query: str = "") -> None:
        self.packer = packers.get(packer)
        self.peer = RawPeer(srv.host, srv.port, timeout=WAIT_S)
        params = [q for q in (f"packer={packer}" if packer != packers.JSON else "", query) if q]
        path = srv.path + ("?" + "&".join(params) if params else "")
        assert self.peer.upgrade(path, timeout=WAIT_S).status == 101
        self.handshake = self.read(WAIT_S)
        assert self.handshake is not None and self.handshake.event == p.EV_HANDSHAKE

    def __enter__(self) -> "PackedPeer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.peer.close()

    def encode(self, event: str, data: Any = None, cb_id: Optional[str] = None) -> bytes:
        return self.packer.encode(event, data, cb_id)

    def wire(self, payload: bytes) -> bytes:
        """``payload`` as one masked frame of this packer's opcode."""
        from sente_lite.testing.abuse import encode_frame
        return encode_frame(payload, OP_BINARY if self.packer.binary else OP_TEXT)

    def send_payloads(self, payloads: List[bytes]) -> None:
        """Every payload in one frame of its own, written with one ``sendall``."""
        self.peer.send(b"".join(self.wire(x) for x in payloads))

    def read(self, timeout: float = WAIT_S) -> Optional[p.Frame]:
        """The next frame decoded (pings skipped); None at the close or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.peer.read_frame(max(0.0, deadline - time.monotonic()))
            if got is None or got[0] == OP_CLOSE:
                return None
            opcode, payload = got
            if opcode not in (OP_TEXT, OP_BINARY):
                continue
            frame = self.packer.decode(payload if opcode == OP_BINARY else payload.decode("utf-8"),
                                       opcode == OP_BINARY)
            if frame.event != p.EV_PING:
                return frame

    def read_until_close(self, timeout: float = WAIT_S) -> Tuple[Optional[int], List[p.Frame]]:
        """Every frame up to the server's close frame: (its code, or None at EOF; frames)."""
        deadline = time.monotonic() + timeout
        frames: List[p.Frame] = []
        while True:
            got = self.peer.read_frame(max(0.0, deadline - time.monotonic()))
            if got is None:
                return None, frames
            opcode, payload = got
            if opcode == OP_CLOSE:
                return close_code(payload), frames
            if opcode in (OP_TEXT, OP_BINARY):
                frames.append(self.packer.decode(
                    payload if opcode == OP_BINARY else payload.decode("utf-8"), opcode == OP_BINARY))


def open_raw(srv: Server) -> RawPeer:
    """A :class:`RawPeer` upgraded (JSON), its handshake read."""
    peer = RawPeer(srv.host, srv.port, timeout=WAIT_S)
    assert peer.upgrade(timeout=WAIT_S).status == 101
    assert peer.read_text(WAIT_S)[0] == p.EV_HANDSHAKE
    return peer


def packers_available() -> List[str]:
    """The packers this machine can test (msgpack when its package is installed)."""
    return [name for name in packers.PACKER_NAMES if packers.available(name)]
