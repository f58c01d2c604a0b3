"""A bug inside a built-in event costs one answer, never the connection or the server."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from sente_lite import Client, RemoteError, Server
from sente_lite import protocol as p


def test_internal_error_in_a_builtin_answers_handler_error_and_keeps_serving(
        make_server: Callable[..., Server], make_client: Callable[..., Client],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: Server, conn: Any, data: Any, cb_id: Any) -> None:
        raise RuntimeError("bug in the subscribe path")

    builtins = dict(Server._builtins)
    builtins[p.EV_SUBSCRIBE] = broken
    monkeypatch.setattr(Server, "_builtins", builtins)
    srv = make_server()

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
