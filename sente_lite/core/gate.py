"""The channel policy: whether a connection may subscribe or publish to a channel."""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

from ..counters import Counter, Counters
from ..wire import protocol as p
from .hub import Broker
from .namespaces import Namespace, Namespaces, namespace_of
from .security import Authorize, report
from .sub_tokens import NEEDS_TOKEN, TOKEN_REQUIRED

# Refusals are logged where operators already look for the server's refusals.
log = logging.getLogger("sente_lite.server")


class ChannelGate:
    """The channel's namespace (when the server has namespaces), ``max_subscriptions_per_conn``,
    the namespace's policy, then the namespace's or the application's ``authorize`` hook."""

    def __init__(self, broker: Broker, counters: Counters, max_subscriptions_per_conn: int,
                 authorize: Optional[Authorize] = None,
                 namespaces: Optional[Namespaces] = None) -> None:
        self.broker = broker
        self.counters = counters
        self.max_subscriptions_per_conn = max_subscriptions_per_conn
        #: ``authorize(conn, action, channel_id) -> bool``: application code, so a face
        #: runs channel operations where handlers run when it is set.
        self.authorize = authorize
        self.namespaces = namespaces

    @property
    def runs_app_code(self) -> bool:
        """A check may call application code (an ``authorize`` hook, the server's or a
        namespace's): a face runs channel operations where handlers run."""
        return self.authorize is not None or (self.namespaces is not None and self.namespaces.has_hooks)

    def check(self, conn: Any, action: str, channel_id: str) -> Optional[Tuple[str, str]]:
        """Checks of one subscribe/publish: None allows, (error code, message) refuses.

        The namespace (``unknown-namespace``), ``max_subscriptions_per_conn``
        (``limit-exceeded``), the namespace's policy, then the ``authorize`` hook
        (``forbidden``; a hook that raises forbids). :data:`~sente_lite.core.sub_tokens.NEEDS_TOKEN`
        when the channel needs a subscription token (``subscribe_token``, or the hook
        answered ``TOKEN_REQUIRED``): the dispatcher checks it.
        """
        namespace: Optional[Namespace] = None
        if self.namespaces is not None:
            namespace = self.namespaces.get(channel_id)
            if namespace is None:
                return self._unknown_namespace(conn, action, channel_id)
        if action == "subscribe":
            refusal = self._limit(conn, channel_id)
            if refusal is not None:
                return refusal
        authorize = self.authorize
        # reading history follows the subscribe rule, token included
        needs = action != "publish" and namespace is not None and namespace.subscribe_token
        if namespace is not None:
            refusal = self._policy(conn, action, channel_id, namespace)
            if refusal is not None:
                return refusal
            if namespace.authorize is not None:
                authorize = namespace.authorize
        if authorize is None:
            return self._token(conn, action, channel_id) if needs else None
        try:
            decision = authorize(conn, action, channel_id)
            if decision is TOKEN_REQUIRED:
                return self._token(conn, action, channel_id)
            allowed = bool(decision)
        except Exception:
            self.counters.add(Counter.HOOK_ERRORS)
            log.exception("authorize hook raised for %s %r (conn %s): forbidden",
                          action, channel_id, conn.conn_id)
            allowed = False
        if allowed:
            return self._token(conn, action, channel_id) if needs else None
        self.counters.add(Counter.FORBIDDEN)
        report(log, f"refused-{action}", "forbidden", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        return p.ERR_FORBIDDEN, f"{action} to {channel_id!r} not allowed"

    def _token(self, conn: Any, action: str, channel_id: str) -> Optional[Tuple[str, str]]:
        """A channel that needs a subscription token: a subscribe's is the dispatcher's to
        check (:data:`NEEDS_TOKEN`); anything else passes while ``conn`` holds a live one."""
        if action == "subscribe":
            return NEEDS_TOKEN
        if channel_id in conn.session.sub_deadlines:
            return None
        self.counters.add(Counter.FORBIDDEN)
        report(log, f"refused-{action}", "no-sub-token", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        return p.ERR_FORBIDDEN, f"{action} to {channel_id!r} needs a subscription with a token"

    def _unknown_namespace(self, conn: Any, action: str, channel_id: str) -> Tuple[str, str]:
        assert self.namespaces is not None
        self.counters.add(Counter.UNKNOWN_NAMESPACE)
        report(log, f"refused-{action}", "unknown-namespace", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        served = ", ".join(repr(n) for n in self.namespaces.names())
        name = namespace_of(channel_id)
        what = (f"namespace {name!r} is not served here" if name else
                "channels without a namespace ('<namespace>:...') are not served here")
        return p.ERR_UNKNOWN_NAMESPACE, f"{action} to {channel_id!r}: {what} (namespaces: {served})"

    def _policy(self, conn: Any, action: str, channel_id: str,
                namespace: Namespace) -> Optional[Tuple[str, str]]:
        """The namespace's ``subscribe``/``publish`` policy: None allows."""
        # reading history ("history") follows the subscribe rule
        policy = namespace.publish if action == "publish" else namespace.subscribe
        if policy == "anyone":
            return None
        if policy == "authenticated" and getattr(conn, "authenticated", False):
            return None
        if policy == "subscribers" and channel_id in self.broker.channels_of(conn.conn_id):
            return None
        self.counters.add(Counter.FORBIDDEN)
        report(log, f"refused-{action}", f"namespace-{policy}", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        who = {"authenticated": "authenticated connections only",
               "subscribers": "its subscribers only (subscribe first)",
               "server": "the server only"}[policy]
        return p.ERR_FORBIDDEN, (f"{action} to {channel_id!r} not allowed: namespace "
                                 f"{namespace_of(channel_id)!r} lets {who} {action}")

    def _limit(self, conn: Any, channel_id: str) -> Optional[Tuple[str, str]]:
        held = self.broker.channels_of(conn.conn_id)
        limit = self.max_subscriptions_per_conn
        if len(held) < limit or channel_id in held:
            return None
        self.counters.add(Counter.SUBSCRIPTION_LIMIT)
        report(log, "refused-subscribe", "max-subscriptions", conn_id=conn.conn_id,
               uid=conn.uid, remote=conn.remote_address, channel_id=channel_id)
        return p.ERR_LIMIT_EXCEEDED, (f"{len(held)} subscriptions already "
                                      f"(max_subscriptions_per_conn={limit})")


__all__ = ["ChannelGate"]
