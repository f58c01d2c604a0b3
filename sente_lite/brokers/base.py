"""The broker seam: what a node (the hub and the server around it) asks of a broker,
and what a broker tells the node back.

Data flows down, imports point down: a broker never imports the node. The node
calls a :class:`Broker`; the broker pushes what it has for this node (publications
built for local delivery, frames routed to users, node events) into the
:class:`BrokerEvents` it was started with, which the hub implements (centrifuge's
``BrokerEventHandler``). Presence of users across nodes is its own interface,
:class:`PresenceBroker`, which a broker offers as ``presence`` (None when every
user is on this node).

A publish carries the channel message's text up to its offset
(:func:`~sente_lite.wire.channels.message_head`); the broker finishes it with the
offset and epoch it assigns (:func:`~sente_lite.wire.channels.message_text`), has
it built once (:meth:`BrokerEvents.build`) and hands it to each local subscriber
(:meth:`BrokerEvents.deliver`) in offset order.
"""

from __future__ import annotations

from typing import (Any, Callable, Dict, Hashable, List, Optional, Protocol, Tuple)

from ..wire.channels import Built, HistoryPage, Published, RecoveryResult, Since

#: ``announce(top offset, epoch, recovery)``: a subscribe's answer, before any message.
Announce = Callable[[int, str, Optional[RecoveryResult]], None]
#: ``done(result)``: a publish's answer, a :class:`Published` or the exception that ended it.
Done = Callable[[Any], None]
#: Runs a piece of delivery work on the node's delivery thread (the server's network
#: thread), which writes what it queued in one pass per connection.
Dispatch = Callable[[Callable[[], None]], None]
#: channel name -> (history size, ttl in seconds) of its own, or None (the broker's).
HistoryLimits = Callable[[str], Optional[Tuple[int, float]]]


class BrokerEvents(Protocol):
    """What a broker tells the node it serves (the hub implements it). Every call is
    made on a broker's thread or a publisher's, never blocks, and never calls the
    broker back under its locks."""

    def build(self, text: bytes, traceparent: Optional[str]) -> Built:
        """One channel message's whole text, built once for every local subscriber."""
        ...

    def deliver(self, member: Hashable, built: Built) -> bool:
        """Hand a built message to local member ``member``; False when it did not take
        it (gone, or its queue is full)."""
        ...

    def lost(self, member: Hashable, channel: str, offset: int, epoch: str,
             reason: str) -> None:
        """Messages of ``channel`` after the last one ``member`` got are lost (``reason``);
        it goes on from ``offset`` in ``epoch`` (a ``recovered: false`` notice)."""
        ...

    def to_user_here(self, uid: str, json_payload: bytes) -> int:
        """An event frame another node sent to user ``uid``: how many connections here took it."""
        ...

    def to_all_here(self, json_payload: bytes) -> int:
        """An event frame another node broadcast: how many connections here took it."""
        ...

    def disconnect_user_here(self, uid: str, code: int, reason: str) -> int:
        """Another node closes user ``uid``: close its connections here; how many."""
        ...

    def user_counts(self) -> Dict[str, int]:
        """uid -> live connections on this node (what presence publishes for it)."""
        ...


class PresenceBroker(Protocol):
    """Users across every node sharing a broker."""

    def users_changed(self) -> None:
        """This node's users changed: publish them (soon, not necessarily now)."""
        ...

    def presence(self, uid: str) -> int:
        """Live connections of ``uid`` on every node."""
        ...

    def route_user(self, uid: str, ready: Callable[[], None]) -> bool:
        """Have this node hear what other nodes send to ``uid`` (its upgrade waits for it).
        True: it does, go on; False: ``ready()`` runs once it does (from another thread)."""
        ...

    def user_count(self) -> int:
        """Distinct users connected to any node."""
        ...

    def nodes(self) -> List[str]:
        """The ids of every live node."""
        ...


class Broker(Protocol):
    """Channels in one offset order per channel, their history and recovery, and
    user routing between the nodes sharing the broker."""

    #: True when its calls may wait on another process (history, presence, routing):
    #: the node then makes them off its network thread.
    waits_on_io: bool
    #: Users across nodes, or None when this node is the only one.
    presence: Optional[PresenceBroker]

    # -- lifecycle -------------------------------------------------------------------
    def start(self, events: BrokerEvents, dispatch: Optional[Dispatch] = None) -> None:
        """Serve the node behind ``events``; replays (and deliveries the broker receives
        from elsewhere) run through ``dispatch`` when given, else on the broker's thread."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread the broker started (idempotent)."""
        ...

    def health(self) -> Dict[str, Any]:
        """``{"broker": name, "broker-status": "up"|"down", ...}``."""
        ...

    def stats(self) -> Dict[str, Any]:
        """Counts and settings, merged into ``Server.stats()``."""
        ...

    def sweep_idle(self) -> int:
        """Expire what channels without subscribers hold (called about once a second)."""
        ...

    def limit_history(self, limits: HistoryLimits) -> None:
        """Per channel name, the (history size, ttl in seconds) of a channel whose history
        is smaller than the broker's (a namespace's), or None for the broker's; never more
        than the broker's. Set before the server starts."""
        ...

    # -- channels --------------------------------------------------------------------
    def publish(self, channel: str, head: str, *, exclude: Optional[Hashable] = None,
                done: Optional[Done] = None, wait: bool = True,
                publish_id: Optional[str] = None, publisher: Optional[str] = None,
                traceparent: Optional[str] = None) -> Optional[Published]:
        """Publish the message whose text up to its offset is ``head``, to every subscriber
        except member ``exclude``. ``delivered`` in the result: the subscribers *of this
        node* it was handed to. ``publish_id`` repeated by ``publisher`` (None: the
        server) within the dedup window answers the first result, ``duplicate=True``.
        With ``wait`` the result is returned (or raised); either way ``done`` gets it."""
        ...

    def subscribe(self, member: Hashable, channel: str, announce: Optional[Announce] = None,
                  since: Optional[Since] = None, replay_budget: Optional[int] = None,
                  ) -> Tuple[int, str, bool, Optional[RecoveryResult]]:
        """Add local member ``member``: ``announce`` then (recovered ``since``) the replay,
        then live messages, with no gap and no duplicate. Returns (top, epoch, newly
        added, recovery) where known at once ((0, "", added, None) when the answer is
        ``announce``'s alone)."""
        ...

    def unsubscribe(self, member: Hashable, channel: str) -> bool:
        """Remove ``member`` from ``channel``; True when it was subscribed."""
        ...

    def remove_member(self, member: Hashable) -> List[str]:
        """Remove ``member`` from every channel; the channel names."""
        ...

    def channels_of(self, member: Hashable) -> List[str]:
        """The channels local member ``member`` holds, sorted."""
        ...

    def subscriber_count(self, channel: str) -> int:
        """Local members of ``channel``."""
        ...

    def subscriber_counts(self) -> Dict[str, int]:
        """Channel -> local members, for every channel with local members."""
        ...

    def history(self, channel: str, since: Optional[Since] = None, limit: Optional[int] = None,
                reverse: bool = False) -> HistoryPage:
        """The kept messages of ``channel`` (after ``since``, with its recovery), oldest
        first (``reverse``: newest first), at most ``limit``."""
        ...

    # -- channel presence (namespaces with presence / join_leave) ------------------------
    def presence_add(self, channel: str, member: Dict[str, Any]) -> bool:
        """Record ``member`` (``{client-id, uid, conn-id, info}``) as present in ``channel``
        for every node; True when its conn-id was not there yet."""
        ...

    def presence_remove(self, channel: str, conn_id: str) -> bool:
        """Forget connection ``conn_id`` in ``channel``; True when it was there."""
        ...

    def presence_of(self, channel: str) -> List[Dict[str, Any]]:
        """The members of ``channel`` on every node."""
        ...

    def presence_stats(self, channel: str) -> Dict[str, int]:
        """``{"members": N, "users": M}`` of ``channel`` on every node."""
        ...

    def presence_json(self, channel: str) -> bytes:
        """:meth:`presence_of` as a JSON array (the reply to a client is made by joining)."""
        ...

    def publish_event(self, channel: str, text: bytes) -> None:
        """Hand the event frame ``text`` (a join or leave) to every subscriber of ``channel``
        on every node, through the path its messages take (so in order with them);
        never waits."""
        ...

    # -- users on other nodes ------------------------------------------------------------
    def to_user(self, uid: str, json_payload: bytes) -> None:
        """Send an event frame to the connections of ``uid`` on every other node."""
        ...

    def broadcast(self, json_payload: bytes) -> None:
        """Send an event frame to every connection of every other node."""
        ...

    def disconnect_user(self, uid: str, code: int, reason: str) -> None:
        """Close the connections of ``uid`` on every other node."""
        ...


__all__ = ["Broker", "BrokerEvents", "PresenceBroker", "Announce", "Done", "Dispatch", "HistoryLimits"]
