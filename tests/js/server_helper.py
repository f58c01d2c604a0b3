"""A sente_lite server for the Node tests, driven by JSON lines on stdin.

Prints ``{"url": ..., "port": ...}`` once serving, then one JSON answer per command:
``{"op": "publish", "channel", "data", "count"}``, ``{"op": "request", "event", "data", "uid"?}``
(to the newest connection, of that uid if given), ``{"op": "events"}`` (``test/note`` events received so far),
``{"op": "pause"}`` / ``{"op": "resume"}`` (stop, then start again on the same port),
``{"op": "py-subscribe", "channel"}`` (a Python client, JSON packer, subscribes; one per
helper), ``{"op": "py-publish", "channel", "data"}`` (it publishes, with ack),
``{"op": "py-got"}`` (what it received: ``[{"data", "from", "offset"}]``),
``{"op": "server-subscribe" | "server-unsubscribe", "target", "channel"}`` (``srv.subscribe``),
``{"op": "disconnect-user", "uid"}`` (closes its connections), ``{"op": "stats"}`` (``srv.stats()``),
``{"op": "subscribers", "channel"}`` (its subscriber count here),
``{"op": "stop"}``. Commands and answers are JSON lines in which bytes are in the tagged
form ``{"$bytes": base64}`` (docs/protocol.md section 10): read as bytes, written from bytes.
``py-subscribe`` takes ``"packer"`` (its first call makes the Python client). The
``test/types`` handler answers the Python type names of its data's leaves. Options: ``--heartbeat-ms``, ``--csrf``, ``--token`` (the only
credential accepted), ``--max-queued-bytes`` (per connection),
``--no-msgpack``, ``--jwt-key`` (JWT connection tokens, HS256, signed with this key),
``--sub-token`` (namespace ``room`` needs subscription tokens; with ``--jwt-key``).
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any, Dict, List, Optional

from sente_lite import JWT, Client, Namespace, Server
from sente_lite.wire import packers
from sente_lite.wire import protocol as p
from sente_lite.errors import SenteLiteError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heartbeat-ms", type=int, default=5000)
    ap.add_argument("--csrf", action="store_true")
    ap.add_argument("--token")
    ap.add_argument("--jwt-key")
    ap.add_argument("--max-queued-bytes", type=int, default=None)
    ap.add_argument("--presence", action="store_true",
                    help="namespaces room (presence, join_leave) and open (neither)")
    ap.add_argument("--sub-token", action="store_true",
                    help="namespace room needs subscription tokens (needs --jwt-key)")
    ap.add_argument("--no-msgpack", action="store_true",
                    help="act as a server without the msgpack package")
    args = ap.parse_args()
    if args.no_msgpack:
        packers.available = lambda name: name == packers.JSON  # type: ignore[assignment]
    notes: List[Any] = []
    lock = threading.Lock()

    queued: Dict[str, Any] = ({} if args.max_queued_bytes is None
                              else {"max_queued_bytes_per_conn": args.max_queued_bytes})
    if args.jwt_key:
        queued["jwt"] = JWT(key=args.jwt_key)
    if args.presence:
        queued["namespaces"] = {"room": {"presence": True, "join_leave": True}, "open": {}}
    if args.sub_token:
        queued["namespaces"] = {"room": Namespace(subscribe_token=True), "": {}}

    def make(port: int) -> Server:
        auth = None
        if args.token:
            auth = lambda req: "user-" + req.token if req.token == args.token else None  # noqa: E731
        srv = Server("127.0.0.1", port, heartbeat_ms=args.heartbeat_ms, csrf=args.csrf,
                     csrf_secret="node-tests-secret-0123456789" if args.csrf else None,
                     authenticate=auth, **queued)
        srv.on("test/add", lambda conn, data: sum(data))
        srv.on("test/echo", lambda conn, data: {"data": data, "packer": conn.packer.name})
        srv.on("test/fail", lambda conn, data: 1 / 0)
        srv.on("test/types", lambda conn, data: type_names(data))

        def note(conn: Any, data: Any) -> None:
            with lock:
                notes.append(data)

        srv.on("test/note", note)
        return srv.start()

    py: Optional[Client] = None
    py_got: List[Any] = []

    def py_note(msg: Any) -> None:
        with lock:
            py_got.append({"data": msg.data, "from": msg.from_uid, "offset": msg.offset})

    srv: Optional[Server] = make(0)
    port = srv.port
    say({"url": srv.url, "port": port})
    try:
        for line in sys.stdin:
            cmd: Dict[str, Any] = p.loads(line)
            op = cmd["op"]
            if op == "stop":
                break
            if op == "pause":
                if srv is not None:
                    srv.stop()
                srv = None
                say({"ok": True})
            elif op == "resume":
                srv = make(port)
                say({"ok": True, "url": srv.url})
            elif op == "publish" and srv is not None:
                last = None
                for i in range(int(cmd.get("count", 1))):
                    data = cmd.get("data")
                    last = srv.publish(cmd["channel"], i if data is None else data)
                say({"ok": True, "offset": last.offset if last else None,
                     "delivered": last.delivered if last else None})
            elif op == "request" and srv is not None:
                conns = srv.connections()
                if not conns:
                    say({"ok": False, "code": "no-connection"})
                    continue
                if cmd.get("uid"):
                    conns = [c for c in conns if c["uid"] == cmd["uid"]] or [{"conn-id": "none"}]
                newest = conns[-1]["conn-id"]
                try:
                    say({"ok": True, "result": srv.request(newest, cmd["event"], cmd.get("data"),
                                                           timeout=5.0)})
                except SenteLiteError as exc:
                    say({"ok": False, "code": getattr(exc, "code", type(exc).__name__)})
            elif op in ("server-subscribe", "server-unsubscribe") and srv is not None:
                call = srv.subscribe if op == "server-subscribe" else srv.unsubscribe
                say({"ok": True, "count": call(cmd["target"], cmd["channel"])})
            elif op == "disconnect-user" and srv is not None:
                say({"ok": True, "count": srv.disconnect_user(cmd["uid"])})
            elif op == "stats" and srv is not None:
                say({"ok": True, "stats": srv.stats()})
            elif op == "subscribers" and srv is not None:
                say({"ok": True, "count": srv.channels.subscriber_count(cmd["channel"])})
            elif op == "py-subscribe" and srv is not None:
                if py is None:
                    py = Client(srv.url, packer=cmd.get("packer", packers.JSON))
                py.subscribe(cmd["channel"], py_note, timeout=5.0)
                say({"ok": True, "uid": py.uid})
            elif op == "py-publish" and py is not None:
                ack = py.publish(cmd["channel"], cmd.get("data"), ack=True, timeout=5.0)
                say({"ok": True, "offset": ack["offset"] if ack else None})
            elif op == "py-got":
                with lock:
                    say({"ok": True, "got": list(py_got)})
            elif op == "events":
                with lock:
                    say({"ok": True, "notes": list(notes)})
            else:
                say({"ok": False, "code": f"cannot {op} now"})
    finally:
        if py is not None:
            py.close()
        if srv is not None:
            srv.stop()
    return 0


def say(obj: Dict[str, Any]) -> None:
    print(p.dumps(obj), flush=True)


def type_names(data: Any) -> Any:
    """``data`` with every leaf replaced by its Python type's name."""
    if isinstance(data, dict):
        return {k: type_names(v) for k, v in data.items()}
    if isinstance(data, list):
        return [type_names(v) for v in data]
    return type(data).__name__


if __name__ == "__main__":
    sys.exit(main())
