"""Misbehaving peers for abuse tests: raw HTTP/WebSocket sockets, a fuzzer, a well-behaved probe.

Nothing here goes through the library's client: a :class:`RawPeer` writes
whatever bytes it is told (broken upgrades, unmasked or oversized frames, bad
UTF-8, floods), so tests can check that a server refuses each thing with the
right status, close code or error and keeps serving everyone else.

* :class:`RawPeer` - one TCP connection: HTTP requests, WebSocket frames, reading answers.
* :class:`Fuzzer` - random attacks, one connection each, until a deadline.
* :class:`SteadyClient` - a well-behaved :class:`sente_lite.Client` that publishes on
  its own channel at a steady rate and checks it hears every message once, in order.
* ``python -m sente_lite.testing.abuse serve --config JSON --port-file P --result-file R``
  runs a server (``Server(**config)``) until SIGTERM, then writes its final stats to R.

Loopback only: every attack targets the host it is given, bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import random
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .. import discovery
from ..wire import framing
from ..client.client import ChannelMessage, Client
from ..errors import SenteLiteError

#: Longest a raw peer waits for one answer.
RAW_TIMEOUT_S = 2.0
#: Largest HTTP response head a raw peer reads.
MAX_RESPONSE_HEAD = 64 * 1024
#: The opcodes (:mod:`sente_lite.wire.framing`'s), for callers of :meth:`RawPeer.send_frame`.
OP_CONT, OP_TEXT, OP_BINARY = framing.OP_CONT, framing.OP_TEXT, framing.OP_BINARY
OP_CLOSE, OP_PING, OP_PONG = framing.OP_CLOSE, framing.OP_PING, framing.OP_PONG


@dataclass
class HttpAnswer:
    """An HTTP response head read by a raw peer (``status`` None: closed without one)."""

    status: Optional[int]
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def upgrade_request(host: str, port: int, path: str = "/chsk",
                    headers: Sequence[Tuple[str, str]] = (), omit: Sequence[str] = ()) -> bytes:
    """The bytes of a WebSocket upgrade request (``omit`` drops standard headers by name)."""
    std = [("Host", f"{host}:{port}"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode("ascii")),
           ("Sec-WebSocket-Version", "13")]
    lines = [f"GET {path} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in std if k not in omit]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, rsv: int = 0,
                 mask: bool = True, declared_length: Optional[int] = None) -> bytes:
    """One client WebSocket frame, masked with a random key unless ``mask`` is False;
    every field may be wrong on purpose (see :func:`sente_lite.wire.framing.encode_frame`)."""
    return framing.encode_frame(payload, opcode, fin, rsv, os.urandom(4) if mask else None,
                                declared_length)


class RawPeer:
    """One raw TCP connection to a server, for saying things a proper client never says."""

    def __init__(self, host: str, port: int, timeout: float = RAW_TIMEOUT_S,
                 source_host: Optional[str] = None) -> None:
        self.host, self.port = host, port
        source = (source_host, 0) if source_host is not None else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=source)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()  # received bytes not yet parsed
        self._frames = framing.FrameParser()
        self._messages: Deque[Tuple[int, bytes]] = collections.deque()
        self.frames_sent = 0
        self.bytes_sent = 0

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (never raises)."""
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    def send_frame(self, payload: bytes, opcode: int = OP_TEXT, **kwargs: Any) -> None:
        """Write one WebSocket frame (see :func:`encode_frame`)."""
        self.send(encode_frame(payload, opcode, **kwargs))
        self.frames_sent += 1

    def send_text(self, text: str) -> None:
        """Write one masked text frame."""
        self.send_frame(text.encode("utf-8"))

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer before the deadline")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read_http(self, timeout: float = RAW_TIMEOUT_S) -> HttpAnswer:
        """Read an HTTP response head (and its Content-Length body). Status None on EOF."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_RESPONSE_HEAD or not self._fill(deadline):
                return HttpAnswer(None)
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        self._buf = bytearray(rest)
        length = int(headers.get("content-length", "0") or 0)
        while len(self._buf) < length and self._fill(deadline):
            pass
        body, self._buf = bytes(self._buf[:length]), self._buf[length:]
        return HttpAnswer(status, headers, body)

    def upgrade(self, path: str = "/chsk", headers: Sequence[Tuple[str, str]] = (),
                timeout: float = RAW_TIMEOUT_S) -> HttpAnswer:
        """Send a proper upgrade request and read the answer (101 when accepted)."""
        self.send(upgrade_request(self.host, self.port, path, headers))
        return self.read_http(timeout)

    def read_frame(self, timeout: float = RAW_TIMEOUT_S) -> Optional[Tuple[int, bytes]]:
        """The next server message or control frame ``(opcode, payload)``; None at EOF.

        Fragments come back joined. A frame that breaks RFC 6455 raises
        :class:`sente_lite.wire.framing.ProtocolError`.
        """
        deadline = time.monotonic() + timeout
        while not self._messages:
            if self._buf:
                data, self._buf = bytes(self._buf), bytearray()
                self._messages.extend(self._frames.feed(data))
            elif not self._fill(deadline):
                return None
        return self._messages.popleft()

    def read_text(self, timeout: float = RAW_TIMEOUT_S) -> Any:
        """The next text frame decoded as JSON (pings from the protocol skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise ConnectionError("connection closed")
            opcode, payload = frame
            if opcode == OP_CLOSE:
                raise ConnectionError(f"connection closed with {close_code(payload)}")
            if opcode == OP_TEXT:
                value = json.loads(payload.decode("utf-8"))
                if value != ["chsk/ws-ping"]:
                    return value

    def read_until_close(self, timeout: float = RAW_TIMEOUT_S) -> Tuple[Optional[int], List[Any]]:
        """Read until the server's close frame: (its code or None on EOF/reset, text frames seen)."""
        deadline = time.monotonic() + timeout
        texts: List[Any] = []
        try:
            while True:
                frame = self.read_frame(max(0.0, deadline - time.monotonic()))
                if frame is None:
                    return None, texts
                opcode, payload = frame
                if opcode == OP_CLOSE:
                    return close_code(payload), texts
                if opcode == OP_TEXT:
                    try:
                        texts.append(json.loads(payload.decode("utf-8")))
                    except ValueError:
                        texts.append(payload)
        except (ConnectionError, OSError):
            return None, texts


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005 when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def http_get(host: str, port: int, path: str, headers: Sequence[Tuple[str, str]] = (),
             timeout: float = RAW_TIMEOUT_S) -> HttpAnswer:
    """A plain ``GET`` (``/health``, ``/metrics``, ``/csrf-token``)."""
    with RawPeer(host, port, timeout) as peer:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers]
        peer.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return peer.read_http(timeout)


# -- the fuzzer -------------------------------------------------------------------------
Attack = Callable[["Fuzzer", random.Random], str]


class Fuzzer:
    """Random attacks on one server until a deadline; each attack uses a connection of its own.

    ``counts`` holds attacks made per kind, ``outcomes`` what the server answered
    (``http-431``, ``close-1009``, ``eof``, ...), ``frames_sent`` / ``bytes_sent``
    the totals. ``avoid_channels`` are never published to (a good client's).
    """

    def __init__(self, host: str, port: int, path: str = "/chsk", seed: Optional[int] = None,
                 max_message_bytes: int = 1 << 20, handshake_timeout: float = 1.0,
                 avoid_channels: Sequence[str] = ()) -> None:
        self.host, self.port, self.path = host, port, path
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout = handshake_timeout
        self.avoid = set(avoid_channels)
        self.counts: Dict[str, int] = {}
        self.outcomes: Dict[str, int] = {}
        self.frames_sent = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()

    # bookkeeping
    def _record(self, attack: str, outcome: str, peer: Optional[RawPeer]) -> None:
        with self._lock:
            self.counts[attack] = self.counts.get(attack, 0) + 1
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if peer is not None:
                self.frames_sent += peer.frames_sent
                self.bytes_sent += peer.bytes_sent

    def run(self, seconds: float, workers: int = 2) -> "Fuzzer":
        """Attack from ``workers`` threads for ``seconds``; returns self (for the figures)."""
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self._work, args=(deadline, self.seed + i),
                                    name=f"abuse-fuzzer-{i}", daemon=True) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 10.0)
        return self

    def _work(self, deadline: float, seed: int) -> None:
        rng = random.Random(seed)
        names = sorted(ATTACKS)
        weights = [ATTACKS[n][1] for n in names]
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            self.attack(name, rng)

    def attack(self, name: str, rng: random.Random) -> str:
        """Make one attack of kind ``name``; returns its outcome."""
        fn = ATTACKS[name][0]
        peer: Optional[RawPeer] = None
        try:
            peer = RawPeer(self.host, self.port)
            outcome = fn(self, peer, rng)
        except (ConnectionError, TimeoutError, OSError) as exc:
            outcome = "reset" if isinstance(exc, ConnectionError) else type(exc).__name__.lower()
        finally:
            if peer is not None:
                peer.close()
        self._record(name, outcome, peer)
        return outcome

    def summary(self) -> Dict[str, Any]:
        """Figures: attacks per kind, outcomes, frames and bytes sent, seed."""
        return {"seed": self.seed, "attacks": sum(self.counts.values()), "frames_sent": self.frames_sent,
                "bytes_sent": self.bytes_sent, "by_attack": dict(sorted(self.counts.items())),
                "outcomes": dict(sorted(self.outcomes.items()))}

    # helpers for attacks
    def _open(self, peer: RawPeer, headers: Sequence[Tuple[str, str]] = ()) -> Optional[str]:
        """Upgrade; None when accepted (handshake frame read), else the outcome."""
        answer = peer.upgrade(self.path, headers)
        if answer.status != 101:
            return _http_outcome(answer)
        peer.read_text()  # the handshake
        return None

    def _finish(self, peer: RawPeer, timeout: float = 1.0) -> str:
        code, _ = peer.read_until_close(timeout)
        return "eof" if code is None else f"close-{code}"

    def channel(self, rng: random.Random) -> str:
        """A channel name no good client uses."""
        while True:
            name = f"fuzz-{rng.randrange(50)}"
            if name not in self.avoid:
                return name


def _http_outcome(answer: HttpAnswer) -> str:
    return "eof" if answer.status is None else f"http-{answer.status}"


def _junk_text(rng: random.Random, fz: Fuzzer) -> str:
    """A text frame body that is valid UTF-8 but (mostly) not a valid protocol frame."""
    choice = rng.randrange(14)
    if choice == 0:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 60)))
    if choice == 1:
        return "[" * rng.randrange(100, 5000)
    if choice == 2:
        return json.dumps({"not": "an array"})
    if choice == 3:
        return json.dumps([rng.random()])
    if choice == 4:
        return json.dumps(["no-slash", 1])
    if choice == 5:
        return json.dumps(["a/b", 1, 2, 3])
    if choice == 6:
        return json.dumps(["a/b", None, "x" * rng.randrange(65, 200)])
    if choice == 7:
        return "[\"a/b\", " + "9" * 5000 + "]"
    if choice == 8:
        return json.dumps(["sente-lite/subscribe", {"channel-id": "x" * rng.randrange(257, 3000)}, "c1"])
    if choice == 9:
        return json.dumps(["sente-lite/subscribe", {"channel-id": "\u0001bad"}])
    if choice == 10:
        return json.dumps(["chsk/no-such-event", None, "c2"])
    if choice == 11:
        return json.dumps(["sente-lite/publish", {"channel-id": fz.channel(rng), "data": rng.random()}])
    if choice == 12:
        return json.dumps(["app/unknown", {"x": [1, 2, {"y": None}]}, f"c{rng.randrange(1000)}"])
    return '["a/b", NaN]'


def attack_garbage(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    peer.send(os.urandom(rng.randrange(1, 2048)) + b"\r\n\r\n")
    return _http_outcome(peer.read_http(1.0))


def attack_truncated_request(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    req = upgrade_request(fz.host, fz.port, fz.path)
    peer.send(req[:rng.randrange(1, len(req) - 4)])
    return "truncated"  # closed right away by us


def attack_long_header_line(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    peer.send(upgrade_request(fz.host, fz.port, fz.path, [("X-Long", "a" * rng.randrange(8200, 20000))]))
    return _http_outcome(peer.read_http())


def attack_many_headers(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    headers = [(f"X-H{i}", "v") for i in range(rng.randrange(130, 300))]
    peer.send(upgrade_request(fz.host, fz.port, fz.path, headers))
    return _http_outcome(peer.read_http())


def attack_long_request_line(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    peer.send(upgrade_request(fz.host, fz.port, fz.path + "?x=" + "a" * rng.randrange(8200, 20000)))
    return _http_outcome(peer.read_http())


def attack_invalid_upgrade(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    omit = rng.choice([("Sec-WebSocket-Key",), ("Upgrade",), ("Sec-WebSocket-Version",),
                       ("Connection",), ("Host",)])
    extra = [("Sec-WebSocket-Version", "8")] if rng.random() < 0.3 and omit != ("Sec-WebSocket-Version",) \
        else []
    peer.send(upgrade_request(fz.host, fz.port, fz.path, extra, omit=omit))
    return _http_outcome(peer.read_http())


def attack_bad_path_or_query(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    path = rng.choice(["/nope", "/chsk/../etc", f"{fz.path}?client-id=%01%02",
                       f"{fz.path}?client-id=" + "x" * 200, "/health?x", "/metrics",
                       "/csrf-token", f"{fz.path}?token=%ff%fe"])
    peer.send(upgrade_request(fz.host, fz.port, path, [("Origin", "https://evil.example")]
                              if rng.random() < 0.3 else []))
    return _http_outcome(peer.read_http())


def attack_slow_upgrade(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    """Slowloris: trickle the upgrade byte by byte for up to the handshake timeout + slack."""
    req = upgrade_request(fz.host, fz.port, fz.path)
    stop = time.monotonic() + min(fz.handshake_timeout + 0.5, 3.0)
    for i in range(len(req) - 4):
        if time.monotonic() > stop:
            return "slow-gave-up"
        peer.send(req[i:i + 1])
        time.sleep(0.05)  # the attack is the delay itself
    return "slow-finished"


def attack_bad_utf8(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    outcome = fz._open(peer)
    if outcome:
        return outcome
    peer.send_frame(rng.choice([b"\xff\xfe", b"[\"a/b\", \"\xc3\x28\"]", b"\xed\xa0\x80", os.urandom(64)]))
    return fz._finish(peer)


def attack_oversized(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    outcome = fz._open(peer)
    if outcome:
        return outcome
    if rng.random() < 0.5:  # announce a huge frame, send a little of it
        peer.send_frame(b"x" * 100, declared_length=fz.max_message_bytes + rng.randrange(1, 1 << 20))
    else:  # fragments that add up to more than the limit
        chunk = b"[" + b" " * 32767
        sent = 0
        first = True
        while sent <= fz.max_message_bytes:
            peer.send_frame(chunk, OP_TEXT if first else OP_CONT, fin=False)
            sent += len(chunk)
            first = False
    return fz._finish(peer)


def attack_random_frames(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    outcome = fz._open(peer)
    if outcome:
        return outcome
    for _ in range(rng.randrange(1, 30)):
        kind = rng.randrange(10)
        if kind < 5:
            peer.send_text(_junk_text(rng, fz))
        elif kind == 5:
            peer.send_frame(os.urandom(rng.randrange(0, 125)), OP_PING)
        elif kind == 6:
            peer.send_frame(os.urandom(rng.randrange(0, 64)), rng.randrange(16),
                            fin=rng.random() < 0.7, rsv=rng.randrange(8))
        elif kind == 7:
            peer.send_frame(b"[\"a/b\"]", OP_TEXT, mask=False)
        elif kind == 8:
            peer.send_frame(struct.pack("!H", rng.choice([999, 1005, 1006, 1015, 2999, 5000])), OP_CLOSE)
        else:
            peer.send_frame(b"x" * 200, OP_PING)  # control frame over 125 bytes
    return fz._finish(peer, 0.5)


def attack_bad_frames_in_row(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    outcome = fz._open(peer)
    if outcome:
        return outcome
    for _ in range(rng.randrange(50, 400)):
        peer.send_text(_junk_text(rng, fz) if rng.random() < 0.2 else "not json")
    return fz._finish(peer)


def attack_flood(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    outcome = fz._open(peer)
    if outcome:
        return outcome
    channel = fz.channel(rng)
    frame = encode_frame(json.dumps(["sente-lite/publish", {"channel-id": channel, "data": 1}]).encode())
    stop = time.monotonic() + 2.0
    try:
        while time.monotonic() < stop:
            peer.send(frame * 50)
            peer.frames_sent += 50
    except OSError:
        pass
    return fz._finish(peer)


def attack_subscribe_storm(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    outcome = fz._open(peer)
    if outcome:
        return outcome
    for i in range(rng.randrange(10, 300)):
        peer.send_text(json.dumps(["sente-lite/subscribe", {"channel-id": f"storm-{rng.randrange(10**6)}"}]))
    code, texts = peer.read_until_close(0.3)
    return "eof" if code is None and not texts else ("answered" if code is None else f"close-{code}")


def attack_connection_burst(fz: Fuzzer, peer: RawPeer, rng: random.Random) -> str:
    """Open many upgrades at once and hold them briefly (connection limit)."""
    peers: List[RawPeer] = [peer]
    statuses: Dict[str, int] = {}
    try:
        for i in range(rng.randrange(5, 80)):  # past a small max_connections now and then
            p = peer if i == 0 else RawPeer(fz.host, fz.port)
            if i:
                peers.append(p)
            p.send(upgrade_request(fz.host, fz.port, fz.path))
        for p in peers:
            outcome = _http_outcome(p.read_http())
            statuses[outcome] = statuses.get(outcome, 0) + 1
    finally:
        for p in peers[1:]:
            p.close()
    return "burst-" + "+".join(f"{k}x{v}" for k, v in sorted(statuses.items()))


#: name -> (attack, weight)
ATTACKS: Dict[str, Tuple[Callable[[Fuzzer, RawPeer, random.Random], str], int]] = {
    "garbage": (attack_garbage, 2),
    "truncated-request": (attack_truncated_request, 2),
    "long-header-line": (attack_long_header_line, 1),
    "many-headers": (attack_many_headers, 1),
    "long-request-line": (attack_long_request_line, 1),
    "invalid-upgrade": (attack_invalid_upgrade, 2),
    "bad-path-or-query": (attack_bad_path_or_query, 2),
    "slow-upgrade": (attack_slow_upgrade, 1),
    "bad-utf8": (attack_bad_utf8, 2),
    "oversized": (attack_oversized, 1),
    "random-frames": (attack_random_frames, 4),
    "bad-frames-in-row": (attack_bad_frames_in_row, 1),
    "flood": (attack_flood, 1),
    "subscribe-storm": (attack_subscribe_storm, 1),
    "connection-burst": (attack_connection_burst, 1),
}


# -- the well-behaved probe ---------------------------------------------------------------
class SteadyClient:
    """A good citizen: publishes ``rate`` messages/s with ack on its own channel and hears them.

    Figures (:meth:`figures`): published, acked, received, lost, out of order,
    duplicates, errors, reconnects, how lost connections ended and publish-to-receive
    latency (ms).
    """

    def __init__(self, url: str, channel: str = "steady", rate: float = 50.0, **client_kwargs: Any) -> None:
        self.channel = channel
        self.interval = 1.0 / rate
        self.client = Client(url, **client_kwargs)
        self.received: List[int] = []
        self.latencies_ms: List[float] = []
        self.errors: List[str] = []
        self.published = 0
        self.acked = 0
        self._sent_at: Dict[int, float] = {}
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="abuse-steady-client", daemon=True)

    def start(self, timeout: float = 5.0) -> "SteadyClient":
        """Connect, subscribe, then publish in the background."""
        if not self.client.wait_connected(timeout):
            raise ConnectionError(f"steady client did not connect to {self.client.url}")
        self.client.subscribe(self.channel, self._on_message, timeout=timeout)
        self._thread.start()
        return self

    def _on_message(self, msg: ChannelMessage) -> None:
        seq = msg.data.get("seq") if isinstance(msg.data, dict) else None
        with self._cond:
            if isinstance(seq, int):
                self.received.append(seq)
                sent = self._sent_at.get(seq)
                if sent is not None:
                    self.latencies_ms.append((time.monotonic() - sent) * 1000.0)
            self._cond.notify_all()

    def _loop(self) -> None:
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                self._sent_at[seq] = time.monotonic()
            try:
                self.client.publish(self.channel, {"seq": seq}, ack=True, timeout=5.0)
                self.acked += 1
            except SenteLiteError as exc:
                self.errors.append(f"publish {seq}: {type(exc).__name__}: {exc}")
            self.published += 1
            seq += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break

    def stop(self, drain_timeout: float = 5.0) -> Dict[str, Any]:
        """Stop publishing, wait for the last deliveries, close; return :meth:`figures`."""
        self._stop.set()
        self._thread.join(10.0)
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= self.acked, drain_timeout)
        stats = self.client.stats()
        self.client.close()
        return self.figures(stats)

    def figures(self, client_stats: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """What this client saw."""
        with self._cond:
            received = list(self.received)
            lat = sorted(self.latencies_ms)
        expected = list(range(self.published))
        seen = set(received)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else 0.0

        stats = client_stats or {}
        return {
            "published": self.published, "acked": self.acked, "received": len(received),
            "lost": len([s for s in expected if s not in seen]),
            "duplicates": len(received) - len(seen),
            "out_of_order": sum(1 for a, b in zip(received, received[1:]) if b <= a),
            "errors": list(self.errors),
            "reconnects": int(stats.get("handshakes", 1)) - 1,
            # how lost connections ended: server close codes, or a server found silent
            "connection_ends": {k: v for k, v in sorted(stats.items())
                                if k.startswith("closed_by_server_") or k == "dead_server_detections"},
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(lat[-1], 2) if lat else 0.0},
        }


# -- a server process for fuzzing ---------------------------------------------------------------
def proc_status(pid: int) -> Dict[str, int]:
    """``Threads`` and ``VmRSS`` (kB) of a process, from /proc."""
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def _serve_main(config: Dict[str, Any], port_file: str, result_file: str) -> None:
    from ..server.server import Server

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Server(port_file=port_file, **config) as srv:
        while not stop.wait(0.2):
            pass
        stats = srv.stats()
    discovery.write_json(result_file, stats)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``serve`` subcommand (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m sente_lite.testing.abuse")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run Server(**config) until SIGTERM")
    serve.add_argument("--config", default="{}", help="Server keyword arguments as JSON")
    serve.add_argument("--port-file", required=True)
    serve.add_argument("--result-file", required=True)
    args = parser.parse_args(argv)
    _serve_main(json.loads(args.config), args.port_file, args.result_file)


if __name__ == "__main__":
    main()
