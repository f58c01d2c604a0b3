"""A bug inside a built-in event costs one answer, never the connection or the server."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest

from sente_lite import Client, RemoteError, Server
from sente_lite.wire import protocol as p
from sente_lite.testing.abuse import RawPeer


def test_internal_error_in_a_builtin_answers_handler_error_and_keeps_serving(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("bug in the subscribe path")

    srv = make_server()
    monkeypatch.setattr(srv._dispatcher.hub, "subscribe", broken)

    @srv.on("app/echo")
    def echo(conn: Any, data: Any) -> Any:
        return data

    c = make_client(srv.url)
    with pytest.raises(RemoteError) as err:
        c.request(p.EV_SUBSCRIBE, {p.K_CHANNEL: "news"}, timeout=5)
    assert err.value.code == p.ERR_HANDLER_ERROR
    assert "internal error" in err.value.message
    assert srv.stats()["internal_errors"] == 1
    assert "bug in the subscribe path" in caplog.text  # logged with its traceback
    # the same connection still works
    assert c.request("app/echo", {"still": "here"}, timeout=5) == {"still": "here"}
    assert c.stats()["handshakes"] == 1


@pytest.mark.parametrize("deferred", [False, True], ids=["on-network-thread", "on-worker"])
def test_internal_error_during_an_upgrade_answers_500_logs_error_and_counts(
        make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, deferred: bool) -> None:
    """A bug in the upgrade path (here the origin/CSRF/slot checks) is never a bare reset.
    With an ``authenticate`` hook the upgrade is decided on a worker thread: same outcome."""
    def broken(self: Server, *args: Any) -> None:
        raise RuntimeError("bug in the upgrade path")

    monkeypatch.setattr(Server, "_admit", broken)
    srv = make_server(authenticate=(lambda req: "alice") if deferred else None)
    with caplog.at_level(logging.ERROR, logger="sente_lite.net"):
        with RawPeer(srv.host, srv.port) as peer:
            answer = peer.upgrade("/chsk", ())
    assert answer.status == 500
    assert b"internal server error" in answer.body
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert [str(r.exc_info[1]) for r in errors] == ["bug in the upgrade path"]  # type: ignore[index]
    assert srv.stats()["upgrade_errors"] == 1
    assert srv.stats()["connections"] == 0
