"""Micro-benchmark of :mod:`sente_lite.wire.framing`: parsing, the server's frames, client frames.

``python -m sente_lite.bench.framing [--frames 100000] [--size 60] [--runs 7]``
prints the median of ``--runs`` runs for each measurement:

* ``read/<reader>`` - a socket reader parsing ``--frames`` unmasked text frames of
  ``--size`` bytes handed over ``--chunk`` bytes per ``recv`` (the client's read
  path). ``framing`` is :class:`~sente_lite.wire.framing.SocketFrameReader`; ``client``
  is ``sente_lite.client._FrameReader`` while the client has a reader of its own,
  for comparison.
* ``text_frame`` - :func:`~sente_lite.wire.framing.text_frame` per frame (the server's fan-out).
* ``encode_masked`` - :func:`~sente_lite.wire.framing.encode_frame` with a mask (a client's send).
* ``feed`` - :class:`~sente_lite.wire.framing.FrameParser` alone, one ``feed`` per chunk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..wire import framing


class _ChunkSocket:
    """A socket stand-in whose ``recv_into`` hands out ``data`` ``chunk`` bytes at a time."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._view = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def recv_into(self, buf: bytearray) -> int:
        n = min(len(buf), self._chunk, len(self._view) - self._pos)
        buf[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def recv(self, size: int) -> bytes:
        n = min(size, self._chunk, len(self._view) - self._pos)
        out = self._view[self._pos:self._pos + n].tobytes()
        self._pos += n
        return out


def _readers() -> Dict[str, Callable[[Any], Any]]:
    out: Dict[str, Callable[[Any], Any]] = {"framing": framing.SocketFrameReader}
    try:
        from ..client.client import _FrameReader  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:  # only while the client has a reader of its own
        if not isinstance(_FrameReader(_ChunkSocket(b"", 1)), framing.SocketFrameReader):
            out["client"] = _FrameReader
    return out


def _payload(size: int) -> bytes:
    head = b'["sente-lite/channel-msg",{"channel-id":"bench","data":"'
    tail = b'","offset":1}]'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def time_read(reader_cls: Callable[[Any], Any], data: bytes, frames: int, chunk: int) -> float:
    """Seconds for ``reader_cls`` to read every message of ``data``."""
    reader = reader_cls(_ChunkSocket(data, chunk))
    got = 0
    t0 = time.perf_counter()
    while got < frames:
        got += len(reader.read())
    elapsed = time.perf_counter() - t0
    if got != frames:
        raise AssertionError(f"read {got} messages, not {frames}")
    return elapsed


def time_text_frame(payload: bytes, frames: int) -> float:
    """Seconds to build ``frames`` server text frames."""
    make = framing.text_frame
    t0 = time.perf_counter()
    for _ in range(frames):
        make(payload)
    return time.perf_counter() - t0


def time_encode_masked(payload: bytes, frames: int) -> float:
    """Seconds to build ``frames`` masked client frames (a fresh random mask each)."""
    encode, urandom = framing.encode_frame, os.urandom
    t0 = time.perf_counter()
    for _ in range(frames):
        encode(payload, mask=urandom(4))
    return time.perf_counter() - t0


def time_feed(data: bytes, frames: int, chunk: int) -> float:
    """Seconds for a :class:`FrameParser` to parse ``data`` fed ``chunk`` bytes at a time."""
    parser = framing.FrameParser()
    view = memoryview(data)
    got = 0
    t0 = time.perf_counter()
    for pos in range(0, len(data), chunk):
        got += len(parser.feed(view[pos:pos + chunk].tobytes()))
    elapsed = time.perf_counter() - t0
    if got != frames:
        raise AssertionError(f"parsed {got} messages, not {frames}")
    return elapsed


def run(frames: int, size: int, runs: int, chunk: int,
        only: Optional[Sequence[str]] = None) -> Dict[str, List[float]]:
    """Seconds of each run, by measurement name."""
    payload = _payload(size)
    plain = framing.text_frame(payload) * frames
    jobs: Dict[str, Callable[[], float]] = {}
    for name, cls in _readers().items():
        jobs[f"read/{name}"] = lambda cls=cls: time_read(cls, plain, frames, chunk)
    jobs["text_frame"] = lambda: time_text_frame(payload, frames)
    jobs["encode_masked"] = lambda: time_encode_masked(payload, frames)
    jobs["feed"] = lambda: time_feed(plain, frames, chunk)
    names = [n for n in jobs if not only or n in only or n.split("/")[0] in only]
    results: Dict[str, List[float]] = {n: [] for n in names}
    for _ in range(runs):  # interleaved, so a noisy moment hits every measurement alike
        for name in names:
            results[name].append(jobs[name]())
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sente_lite.bench.framing",
                                     description="Micro-benchmark of sente_lite.wire.framing.")
    parser.add_argument("--frames", type=int, default=100_000, help="frames per run")
    parser.add_argument("--size", type=int, default=60, help="payload bytes per frame")
    parser.add_argument("--runs", type=int, default=7, help="runs; the median is printed")
    parser.add_argument("--chunk", type=int, default=framing.READ_CHUNK, help="bytes per recv/feed")
    parser.add_argument("--only", nargs="*", help="measurement names (read, text_frame, ...)")
    args = parser.parse_args(argv)
    results = run(args.frames, args.size, args.runs, args.chunk, args.only)
    print(f"{args.frames} frames of {len(_payload(args.size))} bytes, {args.chunk} bytes per read, "
          f"median of {args.runs} runs")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"  {name:<16} {med * 1e3:8.2f} ms  {med / args.frames * 1e9:7.1f} ns/frame  "
              f"{args.frames / med / 1e6:6.2f} M frames/s  (min {min(times) * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
