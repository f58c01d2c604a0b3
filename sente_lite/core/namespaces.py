"""Channel namespaces: who may subscribe and publish, per namespace.

A channel ``chat:room-1`` belongs to the namespace ``chat`` (the part before the first
``:``); a channel without ``:`` to the default namespace ``""``. A server given
``namespaces`` refuses a channel whose namespace it does not list (``unknown-namespace``);
without them every channel follows the server-wide ``authorize`` hook, as before.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..wire import protocol as p
from .security import Authorize

#: Who may subscribe to a namespace's channels.
SUBSCRIBE_POLICIES = ("anyone", "authenticated", "server")
#: Who may publish to a namespace's channels (``subscribers``: connections subscribed to
#: that channel; ``server``: nobody but the server, ``srv.publish``).
PUBLISH_POLICIES = ("anyone", "authenticated", "subscribers", "server")
#: Separates a channel's namespace from the rest of its id.
NAMESPACE_SEPARATOR = ":"
#: The namespace of channels without a separator.
DEFAULT_NAMESPACE = ""


@dataclasses.dataclass(frozen=True)
class Namespace:
    """The options of one channel namespace.

    ``subscribe``: ``"anyone"`` (default), ``"authenticated"`` (a connection whose uid
    the server's ``authenticate`` hook named) or ``"server"`` (no client may).
    ``publish``: the same, or ``"subscribers"`` (connections subscribed to that channel).
    ``authorize(conn, action, channel_id) -> bool``, when given, decides this namespace's
    subscribes and publishes instead of the server's ``authorize`` hook (after the policies).
    ``history_size`` (0: none) and ``history_ttl_s``: each channel's history, at most the
    server's ``history_size``/``history_ttl_s`` (None: the server's).
    ``presence``: the server keeps who is subscribed to each channel (clients may ask,
    ``c.presence(ch)``); ``join_leave``: each channel's subscribers are told who joins
    and leaves it (``sente-lite/join`` / ``sente-lite/leave``).
    ``subscribe_token``: a subscribe needs a subscription token for its channel (a JWT
    with ``sub``, ``channel``, ``exp``: docs/security.md); the server needs ``jwt``.
    """

    subscribe: str = "anyone"
    publish: str = "anyone"
    authorize: Optional[Authorize] = None
    history_size: Optional[int] = None
    history_ttl_s: Optional[float] = None
    presence: bool = False
    join_leave: bool = False
    subscribe_token: bool = False

    def __post_init__(self) -> None:
        for flag in ("presence", "join_leave", "subscribe_token"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"Namespace {flag} must be True or False, "
                                f"got {getattr(self, flag)!r}")
        if self.subscribe not in SUBSCRIBE_POLICIES:
            raise ValueError(f"Namespace subscribe must be one of {', '.join(SUBSCRIBE_POLICIES)}; "
                             f"got {self.subscribe!r}")
        if self.publish not in PUBLISH_POLICIES:
            raise ValueError(f"Namespace publish must be one of {', '.join(PUBLISH_POLICIES)}; "
                             f"got {self.publish!r}")
        if self.authorize is not None and not callable(self.authorize):
            raise TypeError("Namespace authorize must be a callable (conn, action, channel_id) -> bool")
        size, ttl = self.history_size, self.history_ttl_s
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"Namespace history_size must be an int >= 0 (0: no history), got {size!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not 0 < ttl < math.inf):
            raise ValueError(f"Namespace history_ttl_s must be a number of seconds > 0, got {ttl!r}")

    @property
    def own_history(self) -> bool:
        """Its channels' history differs from the server's."""
        return self.history_size is not None or self.history_ttl_s is not None


NamespaceSpec = Union[Namespace, Mapping[str, Any]]


def namespace_of(channel_id: str) -> str:
    """The namespace of ``channel_id``: the part before its first ``:``, else ``""``."""
    head, sep, _ = channel_id.partition(NAMESPACE_SEPARATOR)
    return head if sep else DEFAULT_NAMESPACE


class Namespaces:
    """The namespaces a server serves, by name (checked at construction)."""

    def __init__(self, given: Mapping[str, NamespaceSpec]) -> None:
        if not isinstance(given, Mapping):
            raise TypeError("namespaces must be a dict of name -> Namespace (or a dict of its options), "
                            f"got {type(given).__name__}")
        self.by_name: Dict[str, Namespace] = {}
        for name, spec in given.items():
            if not isinstance(name, str) or NAMESPACE_SEPARATOR in name or (
                    name and p.channel_id_problem(name) is not None):
                raise ValueError(f"namespace name {name!r} must be a str without ':' that is a "
                                 "valid channel id (or '' for channels without a namespace)")
            self.by_name[name] = _namespace(name, spec)

    @property
    def has_hooks(self) -> bool:
        """Some namespace runs application code (its own ``authorize``)."""
        return any(ns.authorize is not None for ns in self.by_name.values())

    def check_history(self, history_size: int, history_ttl_s: float) -> None:
        """ValueError naming a namespace whose history exceeds the server's."""
        for name, ns in self.by_name.items():
            if ns.history_size is not None and ns.history_size > history_size:
                raise ValueError(f"namespace {name!r}: history_size {ns.history_size} exceeds the "
                                 f"server's history_size {history_size} (raise that, or lower this)")
            if ns.history_ttl_s is not None and ns.history_ttl_s > history_ttl_s:
                raise ValueError(f"namespace {name!r}: history_ttl_s {ns.history_ttl_s} exceeds the "
                                 f"server's history_ttl_s {history_ttl_s} (raise that, or lower this)")

    @property
    def need_tokens(self) -> bool:
        """Some namespace needs subscription tokens (``subscribe_token``)."""
        return any(ns.subscribe_token for ns in self.by_name.values())

    @property
    def own_history(self) -> bool:
        """Some namespace's history differs from the server's."""
        return any(ns.own_history for ns in self.by_name.values())

    def history_limits(self, channel_id: str) -> Optional[Tuple[int, float]]:
        """(history size, ttl) of ``channel_id``'s namespace where it has its own (the
        broker takes the smaller of them and its own), else None."""
        ns = self.get(channel_id)
        if ns is None or not ns.own_history:
            return None
        return (sys.maxsize if ns.history_size is None else ns.history_size,
                math.inf if ns.history_ttl_s is None else float(ns.history_ttl_s))

    @property
    def has_presence(self) -> bool:
        """Some namespace has ``presence`` or ``join_leave``."""
        return any(ns.presence or ns.join_leave for ns in self.by_name.values())

    def get(self, channel_id: str) -> Optional[Namespace]:
        """The namespace of ``channel_id``, or None when the server does not serve it."""
        return self.by_name.get(namespace_of(channel_id))

    def names(self) -> Tuple[str, ...]:
        return tuple(sorted(self.by_name))


def _namespace(name: str, spec: NamespaceSpec) -> Namespace:
    if isinstance(spec, Namespace):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"namespace {name!r}: a Namespace or a dict of its options, "
                        f"got {type(spec).__name__}")
    known = {f.name for f in dataclasses.fields(Namespace)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"namespace {name!r}: unknown option(s) {', '.join(map(str, unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    return Namespace(**spec)


def make_namespaces(given: Optional[Mapping[str, NamespaceSpec]]) -> Optional[Namespaces]:
    """:class:`Namespaces` of the ``namespaces`` setting; None when it is None."""
    return None if given is None else Namespaces(given)


__all__ = ["Namespace", "Namespaces", "namespace_of", "make_namespaces", "SUBSCRIBE_POLICIES",
           "PUBLISH_POLICIES", "NAMESPACE_SEPARATOR", "DEFAULT_NAMESPACE"]
