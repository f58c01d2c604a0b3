"""The lifecycle of a server link (sente_lite.server.link_state): the table allows the paths
a link takes and refuses the rest; a link moves only through it, under its lock.

The whole suite runs with ``link_state.strict`` on (tests/conftest.py), so every path a
real server takes is checked against the table; the last test records two of them."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from types import SimpleNamespace
from typing import Callable, Iterator, List, Tuple

import pytest

from sente_lite import Client, Server
from sente_lite.core.inflow import InboundLimits
from sente_lite.server import link_state
from sente_lite.server.link import Link
from sente_lite.server.link_state import (ANSWERED, CLOSED, CLOSING, DEFERRED, DRAINING, FAILING,
                                          FLUSHING, HTTP_API, OPEN, TRANSITIONS, UPGRADED,
                                          UPGRADING, IllegalTransition, LinkState, allowed)
from support import WAIT_S, wait_until

#: The paths a link takes, from its accept to its end.
LIFECYCLES = {
    "opened, then closed by either side": [UPGRADING, OPEN, CLOSING, FLUSHING, DRAINING, CLOSED],
    "opened, then failed for its input": [UPGRADING, OPEN, FAILING, FLUSHING, DRAINING, CLOSED],
    "closing, then failed for its input": [UPGRADING, OPEN, CLOSING, FAILING, FLUSHING, CLOSED],
    "upgrade refused": [UPGRADING, ANSWERED, FLUSHING, DRAINING, CLOSED],
    "auth deferred, then accepted": [UPGRADING, DEFERRED, OPEN, CLOSING, FLUSHING, CLOSED],
    "auth deferred, then refused": [UPGRADING, DEFERRED, ANSWERED, FLUSHING, CLOSED],
    "peer left while auth was deferred": [UPGRADING, DEFERRED, FLUSHING, CLOSED],
    "a server API socket": [UPGRADING, HTTP_API, FLUSHING, DRAINING, CLOSED],
    "a port probe": [UPGRADING, CLOSED],
}


def steps(path: List[LinkState]) -> List[Tuple[LinkState, LinkState]]:
    return list(zip(path, path[1:]))


@pytest.mark.parametrize("name", sorted(LIFECYCLES))
def test_the_table_allows_every_lifecycle(name: str) -> None:
    for old, new in steps(LIFECYCLES[name]):
        assert allowed(old, new), f"{name}: {old.name} -> {new.name}"


@pytest.mark.parametrize("state", [s for s in LinkState if s is not CLOSED])
def test_a_socket_reset_closes_a_link_in_any_state(state: LinkState) -> None:
    assert allowed(state, CLOSED)


def test_the_table_refuses_every_other_transition() -> None:
    taken = {step for path in LIFECYCLES.values() for step in steps(path)}
    taken |= {(s, CLOSED) for s in LinkState if s is not CLOSED}
    for old, new in itertools.product(LinkState, LinkState):
        assert allowed(old, new) == ((old, new) in taken), f"{old.name} -> {new.name}"


def test_closed_is_final_and_nothing_goes_back_to_upgrading() -> None:
    assert TRANSITIONS[CLOSED] == frozenset()
    assert not any(allowed(s, UPGRADING) for s in LinkState)
    assert not any(allowed(s, s) for s in LinkState)  # a move is a change
    assert {s for s in LinkState if allowed(s, OPEN)} == {UPGRADING, DEFERRED}


# -- a Link moving through the table (a socketpair; no network loop) ----------------------
@pytest.fixture
def link() -> Iterator[Link]:
    loop = SimpleNamespace(max_message_bytes=1 << 20, extensions=None, max_queued_bytes=1 << 20,
                           write_delay_ns=0, inbound=InboundLimits(), counts={"internal_errors": 0},
                           call_soon=lambda fn: None)
    a, b = socket.socketpair()
    try:
        yield Link(loop, a, "local", "local:0", None)  # type: ignore[arg-type]
    finally:
        a.close()
        b.close()


def move(link: Link, *states: LinkState) -> None:
    for state in states:
        with link.lock:
            link.to(state)


def test_a_link_is_writable_exactly_while_open(link: Link) -> None:
    assert link.state is UPGRADING and not link.writable
    move(link, OPEN)
    assert link.writable and link.state in UPGRADED
    assert link.close(1000) is True
    assert link.state is CLOSING and not link.writable
    assert link.close(1000) is False  # closing already
    assert link.send(b"x") is False


def test_stop_sending_moves_only_a_link_still_sending_or_closing(link: Link) -> None:
    move(link, OPEN)
    link.stop_sending()
    assert link.state is CLOSING
    link.stop_sending(FAILING)  # an input limit during the closing handshake
    assert link.state is FAILING
    move(link, FLUSHING)
    link.stop_sending(FAILING)
    link.stop_sending()
    assert link.state is FLUSHING


def test_an_illegal_transition_raises_under_the_test_suite(link: Link) -> None:
    assert link_state.strict
    with pytest.raises(IllegalTransition, match="UPGRADING -> FLUSHING"):
        move(link, FLUSHING)
    assert link_state.illegal_seen == ["UPGRADING -> FLUSHING"]
    link_state.illegal_seen.clear()
    with pytest.raises(IllegalTransition, match="without its lock"):
        link.to(OPEN)


def test_in_production_it_is_an_internal_error_and_the_link_moves_anyway(
        link: Link, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(link_state, "strict", False)
    move(link, OPEN, CLOSED)
    with caplog.at_level(logging.ERROR, "sente_lite.net"):
        move(link, OPEN)
    assert link.state is OPEN  # the socket's truth wins over the table
    assert link.loop.counts["internal_errors"] == 1
    assert "CLOSED -> OPEN" in caplog.text and "internal error" in caplog.text
    assert link_state.illegal_seen == []


# -- the paths a real server's links take ---------------------------------------------------
@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[str, LinkState]]:
    """Every transition of every link, as ``(remote, new state)``, in order."""
    seen: List[Tuple[str, LinkState]] = []
    lock = threading.Lock()
    to = Link.to

    def recording(self: Link, new: LinkState) -> None:
        to(self, new)
        with lock:
            seen.append((self.remote, new))

    monkeypatch.setattr(Link, "to", recording)
    return seen


def path_of(seen: List[Tuple[str, LinkState]], remote: str) -> List[LinkState]:
    return [UPGRADING] + [state for r, state in seen if r == remote]


def test_a_client_closing_and_a_refused_upgrade_take_their_paths(
        recorded: List[Tuple[str, LinkState]], make_server: Callable[..., Server],
        make_client: Callable[..., Client]) -> None:
    srv = make_server(authenticate=lambda request: "ann" if request.token == "good" else None)
    c = make_client(srv.url, token="good")
    c.close()
    refused = make_client(srv.url, token="bad", connect=False, auto_reconnect=False)
    wait_until(lambda: refused.status == "closed", what="the refused client to give up")
    wait_until(lambda: sum(1 for _, s in recorded if s is CLOSED) == 2, timeout=WAIT_S,
               what="both links closed")
    opened, answered = dict.fromkeys(r for r, _ in recorded)  # in order of their first move
    # the client's close frame starts CLOSING; the peer may close before the write side shuts
    assert path_of(recorded, opened)[:4] == [UPGRADING, DEFERRED, OPEN, CLOSING]
    assert path_of(recorded, opened)[-1] is CLOSED
    assert path_of(recorded, answered)[:3] == [UPGRADING, DEFERRED, ANSWERED]
    assert path_of(recorded, answered)[-1] is CLOSED
