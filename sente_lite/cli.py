"""Command line: ``sente-lite serve | sub | pub | bench`` (also ``python -m sente_lite``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any, List, Optional

from . import discovery
from .client import ChannelMessage, Client
from .errors import SenteLiteError
from .server import DEFAULT_HEARTBEAT_MS, Server

DEFAULT_PORT = 8765
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}/chsk"


def _resolve_url(args: argparse.Namespace) -> str:
    if args.port_file:
        return str(discovery.read_port_file(args.port_file, timeout=args.timeout)["url"])
    return str(args.url)


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    server = Server(args.host, args.port, path=args.path, port_file=args.port_file,
                    heartbeat_ms=args.heartbeat_ms)
    with server:
        print(server.url, flush=True)
        _wait_for_signal()
    return 0


def cmd_sub(args: argparse.Namespace) -> int:
    def show(msg: ChannelMessage) -> None:
        print(json.dumps({"channel-id": msg.channel_id, "offset": msg.offset, "epoch": msg.epoch,
                          "from": msg.from_uid, "data": msg.data}), flush=True)

    with Client(_resolve_url(args)) as client:
        if not client.wait_connected(args.timeout):
            print(f"error: could not connect to {client.url} within {args.timeout}s", file=sys.stderr)
            return 1
        client.subscribe(args.channel, show, timeout=args.timeout)
        _wait_for_signal()
    return 0


def cmd_pub(args: argparse.Namespace) -> int:
    try:
        data: Any = json.loads(args.json)
    except ValueError as exc:
        print(f"error: JSON argument is not valid JSON: {exc}", file=sys.stderr)
        return 2
    with Client(_resolve_url(args), auto_reconnect=False) as client:
        if not client.wait_connected(args.timeout):
            print(f"error: could not connect to {client.url} within {args.timeout}s", file=sys.stderr)
            return 1
        reply = client.publish(args.channel, data, ack=True, timeout=args.timeout)
    print(json.dumps(reply), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sente-lite", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a server until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    serve.add_argument("--path", default="/chsk")
    serve.add_argument("--port-file", help="write {host,port,url,pid,server-id} here once listening")
    serve.add_argument("--heartbeat-ms", type=int, default=DEFAULT_HEARTBEAT_MS)
    serve.set_defaults(func=cmd_serve)

    for name, func, helptext in (("sub", cmd_sub, "print a channel's messages as JSON lines"),
                                 ("pub", cmd_pub, "publish one JSON value (with ack)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("channel")
        if name == "pub":
            p.add_argument("json", help="the data, as JSON text")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--url", default=DEFAULT_URL)
        where.add_argument("--port-file", help="read the server URL from this port file")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds for connect/ack")
        p.set_defaults(func=func)

    try:
        from . import bench
    except ImportError:  # pragma: no cover - bench ships with the package
        bench = None  # type: ignore[assignment]
    if bench is not None and hasattr(bench, "add_arguments"):
        b = sub.add_parser("bench", help="fan-out benchmark (see README)")
        bench.add_arguments(b)
        b.set_defaults(func=lambda a: bench.run(a))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (SenteLiteError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
