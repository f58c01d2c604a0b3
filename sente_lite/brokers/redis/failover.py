"""A :class:`~sente_lite.brokers.redis.broker.RedisBroker` on a Redis Cluster whose master
fails: publishes a replica holds before they are acknowledged, and what ``/health`` says.

* :class:`ReplicatedPublishes` runs a batch of publishes as one pipeline per master, on a
  connection of the master's own (:mod:`.acks`), then, on the master's ack thread while the
  next batches run, ``WAIT 1 <replica_ack_timeout_ms>`` on that connection: a publish is
  delivered at once but acknowledged only once a replica has it, so a master SIGKILLed and
  replaced by its replica loses no acknowledged publish. When
  no replica acknowledged in time the publishes of that batch are answered
  ``outcome-unknown`` (they ran on the master, which may still lose them), counted as
  ``broker_unreplicated_publishes``. A master with no replica at all (its replica was just
  promoted, or it never had one) acknowledges without waiting until one is back (counted
  as ``broker_publishes_without_replica``): there is nothing to wait for, and a second
  failure would lose its slots' keys, which subscribers are told (``recovered: false``).
* :func:`cluster_errors`: the redis-py errors that mean the cluster's layout is changing
  (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, a slot no node serves): the link
  counts as down, publishes are refused (``unavailable``: the script did not run), and the
  link reconnects with a fresh slot map.
* :class:`ClusterWatch`: while the link is down, which masters (and their slots) do not
  answer and the cluster's state, for ``/health``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...counters import Counter, Counters
from ...errors import BrokerUnavailable, PublishOutcomeUnknown
from .acks import MasterAcks, Waiting

log = logging.getLogger("sente_lite.redis")

#: Milliseconds a publish on a Redis Cluster waits for a replica to hold it (``WAIT 1
#: <ms>``) before it is answered ``outcome-unknown``; 0: no wait (acknowledged once its
#: master ran it, which a failover may then lose).
DEFAULT_REPLICA_ACK_TIMEOUT_MS = 500
#: Masters named in ``/health`` at most while the link is down.
MAX_UNREACHABLE_REPORTED = 16
#: Nodes asked for the cluster's layout after a failed reconnect, at most (each within the
#: link's timeouts): the probe delays the next reconnect by that much at worst.
MAX_NODES_ASKED = 3


def cluster_errors(redis_mod: Any) -> Tuple[type, ...]:
    """The redis-py exceptions that mean a cluster's slots are moving or not served: the
    command did not run, and the slot map must be read again."""
    errors = redis_mod.exceptions
    return tuple(getattr(errors, name) for name in (
        "AskError", "TryAgainError", "ClusterDownError", "ClusterError",
        "RedisClusterException") if hasattr(errors, name))


def check_replica_ack_timeout(ms: int) -> int:
    """``ms`` when it is a valid ``replica_ack_timeout_ms`` (an int >= 0); else ValueError."""
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise ValueError(f"replica_ack_timeout_ms must be an int >= 0 (0: no WAIT), got {ms!r}")
    return ms


class ReplicatedPublishes:
    """Publishes of a batch on a cluster, one pipeline per master, acknowledged once a
    replica holds them (``WAIT``, on the master's ack thread: :mod:`.acks`).

    ``command(entry)`` is an entry's ``EVALSHA`` arguments, ``key(entry)`` the key that
    names its slot, ``answer(entry, result, retry)`` answers one script result (or puts
    the entry in ``retry``), ``finish(entry, result)`` answers it with ``result`` and
    ``unavailable()`` makes the error of a publish that never ran.
    """

    def __init__(self, link: Any, counters: Counters, timeout_ms: int,
                 command: Callable[[Any], Tuple[Any, ...]], key: Callable[[Any], str],
                 answer: Callable[[Any, Any, List[Any]], None],
                 finish: Callable[[Any, Any], None], unavailable: Callable[[], Exception]) -> None:
        self._link = link
        self._counters = counters
        self.timeout_ms = check_replica_ack_timeout(timeout_ms)
        self._command, self._key, self._answer = command, key, answer
        self._finish, self._unavailable = finish, unavailable
        self._lock = threading.Lock()  # the counts, _alone and _masters (ack threads, I/O)
        #: publishes answered outcome-unknown because no replica acknowledged them in time
        self.unreplicated = 0
        #: publishes acknowledged by a master that had no replica connected (none to wait for)
        self.without_replica = 0
        self._alone: Dict[str, None] = {}  # masters with no replica: no WAIT until one is back
        self._masters: Dict[str, MasterAcks] = {}
        self._closed = False

    @property
    def lane_waits(self) -> int:
        """Batches that waited for a lane: every lane of their master waited for a replica."""
        with self._lock:
            return sum(acks.waits for acks in self._masters.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop every ack thread (the batches they hold are answered ``outcome-unknown``
        without waiting) and close the lanes; publishes after this are refused."""
        with self._lock:
            self._closed = True
            masters = list(self._masters.values())
        for acks in masters:
            acks.close(timeout)

    def run(self, batch: List[Any]) -> List[Any]:
        """Run ``batch`` (in order per master) and answer each (once a replica holds it);
        returns those to run again once the scripts are loaded (Redis had lost them)."""
        redis = self._link.redis
        groups: Dict[str, Tuple[Any, List[Any]]] = {}
        retry: List[Any] = []
        for entry in batch:
            try:
                node = redis.get_node_from_key(self._key(entry))
            except cluster_errors(self._link.redis_mod) as exc:  # a slot no master serves
                self._link.lost(exc)
                self._finish(entry, self._unavailable())
                continue
            groups.setdefault(node.name, (node, []))[1].append(entry)
        for node, entries in groups.values():
            if self.timeout_ms:
                self._run_node(node, entries, retry)
            else:
                self._run_unreplicated(node, entries, retry)
        return retry

    def _run_unreplicated(self, node: Any, entries: List[Any], retry: List[Any]) -> None:
        """``replica_ack_timeout_ms`` 0: answered once the master ran them."""
        pipe = node.redis_connection.pipeline(transaction=False)
        for entry in entries:
            pipe.execute_command(*self._command(entry))
        try:
            results = pipe.execute(raise_on_error=False)
        except (self._link.redis_mod.RedisError, OSError) as exc:
            self._failed([(entry, None) for entry in entries], exc)
            return
        for entry, result in zip(entries, results):
            self._answer(entry, result, retry)

    def _run_node(self, node: Any, entries: List[Any], retry: List[Any]) -> None:
        """Run ``entries`` on a lane of ``node``; hand those that ran to its ack thread."""
        acks = self._acks_of(node)
        lane = acks.take() if acks is not None else None
        if lane is None:  # the broker stops: never sent
            for entry in entries:
                self._finish(entry, BrokerUnavailable("server stopping"))
            return
        pipe = lane.pipeline(transaction=False)
        for entry in entries:
            pipe.execute_command(*self._command(entry))
        pipe.execute_command("CLIENT", "ID")  # the WAIT must go on this very connection
        try:
            results = pipe.execute(raise_on_error=False)
        except (self._link.redis_mod.RedisError, OSError) as exc:
            acks.drop(lane)
            self._failed([(entry, None) for entry in entries], exc)
            return
        client_id = results.pop()
        ran: List[Tuple[Any, Any]] = []
        for entry, result in zip(entries, results):
            if isinstance(result, Exception):  # not run: answered now, no replica to wait for
                self._answer(entry, result, retry)
            else:
                ran.append((entry, result))
        waiting = Waiting(lane, client_id, ran)
        if not ran:
            acks.give_back(lane)
        elif not acks.wait_for_replica(waiting):  # the broker stops meanwhile
            self._settle(acks, waiting, True)

    def _acks_of(self, node: Any) -> Optional[MasterAcks]:
        """The lanes and ack thread of master ``node`` (made on first use; None once closed)."""
        with self._lock:
            if self._closed:
                return None
            acks = self._masters.get(node.name)
            if acks is None:
                host, port = node.host, node.port
                # a WAIT may take its whole timeout on top of the answer's usual time
                timeout_s = self._link.command_timeout_s + self.timeout_ms / 1000
                acks = self._masters[node.name] = MasterAcks(
                    node.name, lambda: self._link.node_client(
                        host, port, max_connections=1, socket_timeout=timeout_s),
                    self._settle)
            return acks

    def _settle(self, acks: MasterAcks, waiting: Waiting, stopping: bool) -> None:
        """Answer a batch that ran on ``acks``' master once a replica holds it (ack thread)."""
        if stopping:
            acks.give_back(waiting.lane)
            for entry, _ in waiting.ran:
                self._finish(entry, self.unknown(None, "the server stopped before a replica "
                                                       "acknowledged it"))
            return
        try:
            acked = self._replica_ack(acks.name, waiting)
        except (self._link.redis_mod.RedisError, OSError) as exc:
            acks.drop(waiting.lane)
            self._failed(waiting.ran, exc)
            return
        acks.give_back(waiting.lane)
        if isinstance(acked, Exception) and self._link.is_link_error(acked):
            self._link.lost(acked)
        for entry, result in waiting.ran:
            if isinstance(acked, int) and acked >= 1:
                self._answer(entry, result, [])  # ran: never a script to load again
            else:
                with self._lock:
                    self.unreplicated += 1
                self._finish(entry, self.unknown(acked, f"no replica acknowledged it in "
                                                        f"{self.timeout_ms} ms"))

    def _replica_ack(self, name: str, waiting: Waiting) -> Any:
        """How many replicas hold the batch (``WAIT 1 <ms>`` on its lane); 1 for a master
        with no replica (counted), an exception when Redis refused or the lane was renewed."""
        lane = waiting.lane
        with self._lock:
            alone = name in self._alone
        if alone:  # nothing to wait for: ask whether a replica came back
            if _replicas(lane.execute_command("INFO", "replication")):
                with self._lock:
                    self._alone.pop(name, None)
                log.warning("Redis master %s has a replica again: publishes wait for it", name)
            with self._lock:
                self.without_replica += len(waiting.ran)
            return 1
        pipe = lane.pipeline(transaction=False)
        pipe.execute_command("CLIENT", "ID")
        pipe.execute_command("WAIT", 1, self.timeout_ms)
        client_id, acked = pipe.execute(raise_on_error=False)
        if client_id != waiting.client_id:  # reconnected: this WAIT counts none of them
            return self._link.redis_mod.exceptions.ConnectionError(
                "the connection that ran them was renewed before WAIT")
        if acked == 0 and self._has_no_replica(lane):
            with self._lock:
                self._alone[name] = None
            log.warning("Redis master %s has no replica: its publishes are acknowledged "
                        "without one (a second failure loses them) until one is back", name)
        return acked

    def _failed(self, ran: List[Tuple[Any, Any]], exc: BaseException) -> None:
        """The link to a master failed with these publishes sent (or partly): the master
        may have run them (see RedisPublisher)."""
        link = self._link
        link.lost(exc) if link.is_link_error(exc) else log.error("publish failed: %s", exc)
        for entry, _ in ran:
            self._finish(entry, self.unknown(exc, "the link to it failed"))

    def _has_no_replica(self, lane: Any) -> bool:
        """True when the master of ``lane`` says it has no replica connected."""
        try:
            return _replicas(lane.execute_command("INFO", "replication")) == 0
        except (self._link.redis_mod.RedisError, OSError):
            return False

    def unknown(self, why: Any, what: str) -> PublishOutcomeUnknown:
        """The answer to a publish its master ran (or may have) that no replica is known
        to hold (counted as ``outcome_unknown_publishes``)."""
        self._counters.add(Counter.OUTCOME_UNKNOWN_PUBLISHES)
        detail = f" ({type(why).__name__}: {why})" if isinstance(why, BaseException) else ""
        return PublishOutcomeUnknown(
            f"the channel's Redis master ran the publish but {what}{detail}: a failover may "
            "lose it; resend it with the same id")


class ClusterWatch:
    """Which masters of a cluster do not answer, and the cluster's state, while the link is
    down (:meth:`probe` on the link thread; :meth:`health` for ``/health``)."""

    def __init__(self, redis_mod: Any, nodes: List[Tuple[str, int]],
                 options: Dict[str, Any]) -> None:
        self._redis_mod = redis_mod
        self._known: Dict[Tuple[str, int], None] = dict.fromkeys(nodes)
        self._options = options  # the link's: its timeouts, no retries
        self.state: Optional[str] = None
        self.unreachable: List[str] = []  # "host:port" of masters that do not answer
        self.slots: List[str] = []  # "low-high" ranges those masters serve

    def clear(self) -> None:
        """The link is back: nothing to report."""
        self.state, self.unreachable, self.slots = None, [], []

    def health(self) -> Dict[str, Any]:
        """``broker-cluster-state`` and the unreachable masters and slots (while down)."""
        out: Dict[str, Any] = {}
        if self.state is not None:
            out["broker-cluster-state"] = self.state
        if self.unreachable:
            out["broker-unreachable-masters"] = self.unreachable[:MAX_UNREACHABLE_REPORTED]
            out["broker-unreachable-slots"] = self.slots
        return out

    def probe(self) -> None:
        """Ask a node that answers (of the first ``MAX_NODES_ASKED`` known) for the cluster's
        state and slot map, then ping every master (each within the link's timeouts, not
        retried). Link thread, while the link is down."""
        layout: Optional[Tuple[str, Any]] = None
        for address in list(self._known)[:MAX_NODES_ASKED]:
            layout = self._ask(address)
            if layout is not None:
                break
        if layout is None:
            self.state, self.unreachable, self.slots = "unreachable", [], []
            return
        self.state, slots = layout
        down: Dict[str, List[str]] = {}
        for low, high, master, *_ in slots:
            address = (_text(master[0]) or "127.0.0.1", int(master[1]))
            self._known.setdefault(address, None)
            name = f"{address[0]}:{address[1]}"
            if name in down or not self._answers(address):
                down.setdefault(name, []).append(f"{low}-{high}")
        self.unreachable = sorted(down)
        self.slots = sorted(r for ranges in down.values() for r in ranges)

    def _client(self, address: Tuple[str, int]) -> Any:
        return self._redis_mod.Redis(host=address[0], port=address[1], **self._options)

    def _ask(self, address: Tuple[str, int]) -> Optional[Tuple[str, Any]]:
        client = self._client(address)
        try:
            info = _text(client.execute_command("CLUSTER", "INFO"))
            slots = client.execute_command("CLUSTER", "SLOTS")
        except (self._redis_mod.RedisError, OSError):
            return None
        finally:
            client.close()
        state = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                      if line.startswith("cluster_state:")), "unknown")
        return state, slots

    def _answers(self, address: Tuple[str, int]) -> bool:
        client = self._client(address)
        try:
            return bool(client.ping())
        except (self._redis_mod.RedisError, OSError):
            return False
        finally:
            client.close()


def _replicas(info: Any) -> int:
    """``connected_slaves`` of an ``INFO replication`` answer (parsed or not); 0 if absent."""
    if isinstance(info, dict):
        return int(info.get("connected_slaves", 0))
    if isinstance(info, (bytes, str)):
        for line in _text(info).splitlines():
            if line.startswith("connected_slaves:"):
                return int(line.split(":", 1)[1])
    return 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


__all__ = ["ReplicatedPublishes", "ClusterWatch", "cluster_errors", "check_replica_ack_timeout",
           "DEFAULT_REPLICA_ACK_TIMEOUT_MS", "MAX_UNREACHABLE_REPORTED", "MAX_NODES_ASKED"]
