"""A bug in the upgrade path is answered 500, never a bare reset (a bug inside a built-in
event costs one answer: tests/core/test_dispatcher.py, and over a socket
tests/server/test_inline_dispatch.py)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest

from sente_lite import Server
from sente_lite.testing.abuse import RawPeer


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
