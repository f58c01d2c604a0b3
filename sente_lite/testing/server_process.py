"""The server behaviour: a :class:`~sente_lite.Server` driven by commands from the parent.

The process binds (port 0 = any free port), writes the run's port file, marks
``ready`` and then executes commands in order until ``stop``
(:meth:`ProcessContext.serve_commands`): a failing command is answered with its
error and does not end the server.

Commands (see :meth:`sente_lite.testing.Run.server_command`):

* ``publish`` ``{channel, data}``: a server-side publish (``from`` is null). A dict
  ``data`` gets ``sent_ns`` set just before the publish. Value: ``offset``,
  ``epoch``, ``delivered``.
* ``await-subscribers`` ``{channel, count, timeout}``: wait until ``channel`` has
  exactly ``count`` subscribers. Value: the count.
* ``await-closes`` ``{code, count, timeout}``: wait until at least ``count``
  connections ended with close code ``code``. Value: how many did.
* ``stats``: :meth:`Server.stats`. ``connections``: :meth:`Server.connections`.
* ``send-to-user`` ``{uid, event, data}``: :meth:`Server.send_to_user` (value: how many
  connections here took it). ``presence`` ``{uid}``: :meth:`Server.presence` and
  :meth:`Server.user_count`. ``health``: what ``GET /health`` answers (status, body).
  ``presence-of`` ``{channel}``: :meth:`Server.presence_of` (the channel's members).
* ``stop``: stop the server; the process's result value is the final stats.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
from typing import Any, Callable, Dict, Optional

from ..errors import DiscoveryTimeout
from ..discovery import wait_for
from ..server.server import Server
from .child import ProcessContext
from .common import SCENARIO_TIMEOUT_S, SENT_NS_KEY

log = logging.getLogger("sente_lite.testing.server")

#: Seconds the server process waits for its next command before it gives up and ends.
SERVER_IDLE_TIMEOUT_S = 10 * SCENARIO_TIMEOUT_S

ServerSetup = Callable[[Server], None]


def _publish(srv: Server, data: Dict[str, Any]) -> Dict[str, Any]:
    payload = data.get("data")
    if isinstance(payload, dict):
        payload = {**payload, SENT_NS_KEY: time.monotonic_ns()}
    result = srv.publish(data["channel"], payload)
    return {"offset": result.offset, "epoch": result.epoch, "delivered": result.delivered}


def _await_subscribers(srv: Server, data: Dict[str, Any]) -> int:
    channel, count = data["channel"], int(data["count"])
    timeout = float(data.get("timeout", SCENARIO_TIMEOUT_S))
    try:
        wait_for(lambda: srv.channels.subscriber_count(channel) == count or None, timeout,
                 f"{count} subscribers on {channel!r}")
    except DiscoveryTimeout as exc:
        raise DiscoveryTimeout(f"{exc} (it has {srv.channels.subscriber_count(channel)})") from None
    return count


def _await_closes(srv: Server, data: Dict[str, Any]) -> int:
    code, count = int(data["code"]), int(data.get("count", 1))
    timeout = float(data.get("timeout", SCENARIO_TIMEOUT_S))

    def closes() -> int:
        return int(srv.stats()["closes_by_code"].get(code, 0))

    try:
        wait_for(lambda: closes() >= count or None, timeout, f"{count} closes with code {code}")
    except DiscoveryTimeout as exc:
        raise DiscoveryTimeout(f"{exc} (there were {closes()})") from None
    return closes()


def _health(srv: Server, data: Dict[str, Any]) -> Dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=SCENARIO_TIMEOUT_S)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return {"status": response.status, "body": json.loads(response.read())}
    finally:
        conn.close()


COMMANDS: Dict[str, Callable[[Server, Dict[str, Any]], Any]] = {
    "publish": _publish,
    "await-subscribers": _await_subscribers,
    "await-closes": _await_closes,
    "stats": lambda srv, data: srv.stats(),
    "connections": lambda srv, data: srv.connections(),
    "send-to-user": lambda srv, data: srv.send_to_user(data["uid"], data["event"], data.get("data")),
    "presence": lambda srv, data: {"presence": srv.presence(data["uid"]),
                                   "users": srv.user_count()},
    "health": _health,
    "presence-of": lambda srv, data: srv.presence_of(data["channel"]),
}


def serve(ctx: ProcessContext, server_kwargs: Dict[str, Any],
          setup: Optional[ServerSetup] = None) -> Dict[str, Any]:
    """Run a server until the ``stop`` command; return its final stats."""
    srv = Server(port_file=ctx.port_file, **server_kwargs)
    if setup is not None:
        setup(srv)
    handlers = {name: functools.partial(fn, srv) for name, fn in COMMANDS.items()}
    with srv:
        ctx.mark("ready", port=srv.port, url=srv.url, server_id=srv.server_id)
        ctx.serve_commands(handlers, stop="stop", timeout=SERVER_IDLE_TIMEOUT_S)
        stats = srv.stats()
    return stats
