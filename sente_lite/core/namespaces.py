"""Channel namespaces: who may subscribe and publish, per namespace.

A channel ``chat:room-1`` belongs to the namespace ``chat`` (the part before the first
``:``); a channel without ``:`` to the default namespace ``""``. A server given
``namespaces`` refuses a channel whose namespace it does not list (``unknown-namespace``);
without them every channel follows the server-wide ``authorize`` hook, as before.
"""

from __future__ import annotations

import dataclasses
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
    """

    subscribe: str = "anyone"
    publish: str = "anyone"
    authorize: Optional[Authorize] = None

    def __post_init__(self) -> None:
        if self.subscribe not in SUBSCRIBE_POLICIES:
            raise ValueError(f"Namespace subscribe must be one of {', '.join(SUBSCRIBE_POLICIES)}; "
                             f"got {self.subscribe!r}")
        if self.publish not in PUBLISH_POLICIES:
            raise ValueError(f"Namespace publish must be one of {', '.join(PUBLISH_POLICIES)}; "
                             f"got {self.publish!r}")
        if self.authorize is not None and not callable(self.authorize):
            raise TypeError("Namespace authorize must be a callable (conn, action, channel_id) -> bool")


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
