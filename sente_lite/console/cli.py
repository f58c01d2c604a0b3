"""``sente-lite console [ws://... | --nrepl host:port] [-e CODE]``: the operator's console.

Without a target it reads ``.nrepl-port`` in the working directory (as editors do).
``-e CODE`` evaluates once and exits: 0, or 1 when the code raised (or the console
refused), 2 when it could not connect. Without ``-e`` it is an interactive prompt
with line editing and history (``readline``); Ctrl-C while code runs sends
``interrupt``; Ctrl-D leaves.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional

from .client import ConsoleClient, ConsoleError, TcpTransport, WsClientTransport, status_of
from .settings import DEFAULT_PORT_FILE

#: Where the interactive prompt keeps its history (env SENTE_LITE_CONSOLE_HISTORY overrides).
HISTORY_FILE = os.path.join(os.path.expanduser("~"), ".sente_lite_console_history")
HISTORY_LINES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``console`` subcommand's arguments."""
    parser.add_argument("target", nargs="?", help="ws://host:port/chsk (the WebSocket console); "
                        "default: the TCP console named by ./.nrepl-port")
    parser.add_argument("--nrepl", metavar="HOST:PORT", help="the nREPL TCP console at HOST:PORT")
    parser.add_argument("-e", "--eval", dest="code", help="evaluate CODE, print its output and value, exit "
                        "(1 if it raised)")
    parser.add_argument("--token", help="credential for the WebSocket console (env SENTE_LITE_TOKEN)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer "
                        "(default 30)")


def add_subcommand(subparsers: Any) -> None:
    """``sente-lite console``, added to the ``sente-lite`` parser's subcommands."""
    parser = subparsers.add_parser("console", help="a remote Python console (nREPL) of a server or "
                                   "client", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)


def _host_port(text: str) -> "tuple[str, int]":
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--nrepl {text!r}: give HOST:PORT, e.g. 127.0.0.1:7888")
    return host.strip("[]") or "127.0.0.1", int(port)


def connect(args: argparse.Namespace) -> Any:
    """The transport the arguments name."""
    if args.target and args.nrepl:
        raise ValueError("give either a ws:// target or --nrepl HOST:PORT, not both")
    if args.target:
        if not args.target.startswith(("ws://", "wss://")):
            raise ValueError(f"target {args.target!r}: give ws://host:port/path or --nrepl HOST:PORT")
        return WsClientTransport(args.target, args.token or os.environ.get("SENTE_LITE_TOKEN"),
                                 min(args.timeout, 10.0))
    if args.nrepl:
        return TcpTransport(*_host_port(args.nrepl))
    try:
        with open(DEFAULT_PORT_FILE, encoding="ascii") as fh:
            port = int(fh.read().strip())
    except (OSError, ValueError):
        raise ValueError(f"no console named: give ws://..., or --nrepl HOST:PORT, or run where "
                         f"{DEFAULT_PORT_FILE} holds a port") from None
    return TcpTransport("127.0.0.1", port)


def _write(stream: Any) -> Any:
    return lambda text: (stream.write(text), stream.flush())


def evaluate(console: ConsoleClient, code: str, timeout: float) -> bool:
    """Evaluate ``code``, printing output and value; False when it raised or was refused."""
    answers = console.eval(code, _write(sys.stdout), _write(sys.stderr), timeout)
    for answer in answers:
        if "value" in answer:
            print(answer["value"], flush=True)
    words = status_of(answers)
    if "interrupted" in words:
        print("interrupted", file=sys.stderr, flush=True)
    if "error" in words and "eval-error" not in words:
        print(f"error: console answered {', '.join(w for w in words if w != 'done')}", file=sys.stderr)
    return not ({"eval-error", "error", "interrupted"} & set(words))


def _read_block(prompt: str) -> str:
    lines: List[str] = [input(prompt)]
    while lines[-1].rstrip().endswith((":", "\\")) or (len(lines) > 1 and lines[-1].strip()):
        lines.append(input("... "))
    return "\n".join(lines)


def interactive(console: ConsoleClient, timeout: float) -> int:
    """The prompt loop: read, evaluate, print; history kept in :data:`HISTORY_FILE`."""
    history = os.environ.get("SENTE_LITE_CONSOLE_HISTORY", HISTORY_FILE)
    try:
        import readline
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_history_length(HISTORY_LINES)
    except ImportError:  # pragma: no cover - readline is missing on some platforms
        readline = None  # type: ignore[assignment]
    print(f"sente-lite console, session {console.session}; Ctrl-C interrupts, Ctrl-D leaves", flush=True)
    try:
        while True:
            try:
                code = _read_block(">>> ")
            except KeyboardInterrupt:
                print(flush=True)
                continue
            except EOFError:
                print(flush=True)
                return 0
            if code.strip():
                evaluate(console, code, timeout)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


def run(args: argparse.Namespace) -> int:
    """Run the ``console`` subcommand."""
    try:
        transport = connect(args)
    except OSError as exc:
        print(f"error: cannot reach the console: {exc}", file=sys.stderr)
        return 2
    except ConsoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        console = ConsoleClient(transport, timeout=min(args.timeout, 10.0))
        if args.code is not None:
            return 0 if evaluate(console, args.code, args.timeout) else 1
        return interactive(console, args.timeout)
    except ConsoleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m sente_lite.console.cli``."""
    parser = argparse.ArgumentParser(prog="sente-lite console", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
