"""An upgrade answered only once the broker routes its user's messages to this server.

A broker's presence has ``route_user(uid, ready) -> bool``: with the Redis broker's
sharded subscription each server listens only to the users it holds, so the faces call
:func:`routed_now` with the front's verdict before they answer an upgrade: a
``send_to_user`` made after a client's handshake (from any server) reaches it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..brokers.base import Broker
from .front import Admit

#: ``route_user(uid, ready)``: True when routed now; else ``ready()`` runs once it is.
RouteUser = Callable[[str, Callable[[], None]], bool]


def route_of(broker: Broker) -> Optional[RouteUser]:
    """The ``route_user`` of the broker's presence, or None (one node only)."""
    presence = broker.presence
    return None if presence is None else presence.route_user


def routed_now(route: Optional[RouteUser], decision: Any, later: Callable[[], None]) -> bool:
    """True: answer ``decision`` now (not an admitted upgrade, or its user is routed here);
    False: ``later()`` runs once it is (from the broker's thread)."""
    if route is None or not isinstance(decision, Admit):
        return True
    return route(decision.identity.uid, later)


__all__ = ["RouteUser", "route_of", "routed_now"]
