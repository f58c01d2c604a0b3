"""The lifecycle of a link (one accepted socket of :mod:`sente_lite.server.netloop`): its
states and the transitions between them. Everything that decides a link's state is here.

A link is accepted ``UPGRADING``. Its request opens it (``OPEN``: a 101 went out), is
answered with plain HTTP (``ANSWERED``), waits for a decision made on another thread
(``DEFERRED``: the ``authenticate`` hook), or turns out to be a server API socket
(``HTTP_API``). An open link stops sending frames when a closing handshake starts
(``CLOSING``) or when the server fails it for its input (``FAILING``: nothing more it
sends is read). Once websockets ends the stream, what is queued goes out (``FLUSHING``),
then the write side is shut (``DRAINING``) and the peer has ``close_timeout`` to close
its side. ``CLOSED`` is final: the socket is closed and the handler told. A socket
reset, a deadline or the server stopping closes a link from any state.

The state changes on the loop thread, except ``OPEN -> CLOSING`` which
:meth:`~sente_lite.server.link.Link.close` makes from any thread; every change holds the
link's lock, so a sender that checks the state under it never writes to a closing link.
"""

from __future__ import annotations

import enum
import logging
from typing import Dict, FrozenSet, List

log = logging.getLogger("sente_lite.net")


class LinkState(enum.Enum):
    """Where a link is in its life (see the module docstring)."""

    UPGRADING = "upgrading"  # accepted: its upgrade request is arriving
    DEFERRED = "deferred"    # its request waits for a decision made on another thread
    OPEN = "open"            # the 101 went out: frames may be sent
    CLOSING = "closing"      # a closing handshake started (either side): no more frames sent
    FAILING = "failing"      # closed by the server for its input: its frames are not read
    ANSWERED = "answered"    # its request got an HTTP answer instead of a 101
    HTTP_API = "http-api"    # a server API socket (POST /api/...), not an upgrade
    FLUSHING = "flushing"    # the stream ends: what is queued goes out, then the write side shuts
    DRAINING = "draining"    # the write side is shut: the peer has close_timeout to close its side
    CLOSED = "closed"        # the socket is closed and the handler told (final)


UPGRADING, DEFERRED, OPEN = LinkState.UPGRADING, LinkState.DEFERRED, LinkState.OPEN
CLOSING, FAILING, ANSWERED = LinkState.CLOSING, LinkState.FAILING, LinkState.ANSWERED
HTTP_API, FLUSHING = LinkState.HTTP_API, LinkState.FLUSHING
DRAINING, CLOSED = LinkState.DRAINING, LinkState.CLOSED

#: The allowed transitions, from each state. ``CLOSED`` is reachable from every other
#: state (a reset, a deadline, the server stopping) and leads nowhere.
TRANSITIONS: Dict[LinkState, FrozenSet[LinkState]] = {
    UPGRADING: frozenset({DEFERRED, OPEN, ANSWERED, HTTP_API, CLOSED}),
    # the peer leaving while its upgrade is decided makes websockets end the stream
    DEFERRED: frozenset({OPEN, ANSWERED, FLUSHING, CLOSED}),
    OPEN: frozenset({CLOSING, FAILING, CLOSED}),
    # an input limit can still fail a link whose closing handshake is under way
    CLOSING: frozenset({FAILING, FLUSHING, CLOSED}),
    FAILING: frozenset({FLUSHING, CLOSED}),
    ANSWERED: frozenset({FLUSHING, CLOSED}),
    HTTP_API: frozenset({FLUSHING, CLOSED}),
    FLUSHING: frozenset({DRAINING, CLOSED}),
    DRAINING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}

#: States whose frames are read and handed to the link's owner.
READING_FRAMES: FrozenSet[LinkState] = frozenset({OPEN, CLOSING})
#: States in which the 101 went out and the stream has not ended yet.
UPGRADED: FrozenSet[LinkState] = frozenset({OPEN, CLOSING, FAILING})


class IllegalTransition(RuntimeError):
    """A link was asked for a state that :data:`TRANSITIONS` does not allow from its own."""


#: True under the test suite (tests/conftest.py): an illegal transition raises
#: :class:`IllegalTransition` and is kept in :data:`illegal_seen`. Otherwise it is logged
#: as an internal error and the link takes the state asked for anyway: the socket's
#: state is a fact, and a link that could not reach ``CLOSED`` would leak.
strict = False
#: ``"OLD -> NEW"`` of every illegal transition seen while :data:`strict`.
illegal_seen: List[str] = []


def allowed(old: LinkState, new: LinkState) -> bool:
    """True when a link may go from ``old`` to ``new``."""
    return new in TRANSITIONS[old]


def illegal(where: str, old: LinkState, new: LinkState) -> None:
    """Report the illegal transition of link ``where`` (see :data:`strict`)."""
    what = f"{old.name} -> {new.name}"
    if strict:
        illegal_seen.append(what)
        raise IllegalTransition(f"{where}: {what}")
    log.error("internal error: %s went %s, which its state table does not allow", where, what)


__all__ = ["LinkState", "TRANSITIONS", "READING_FRAMES", "UPGRADED", "IllegalTransition",
           "allowed", "illegal"]
