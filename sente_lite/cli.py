"""Command line: ``sente-lite serve | sub | pub | token | console | bench`` (also
``python -m sente_lite``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import discovery
from . import limits as lim
from .brokers.local import (DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL,
                            DEFAULT_HISTORY_MAX_BYTES_TOTAL, DEFAULT_HISTORY_SIZE,
                            DEFAULT_HISTORY_TTL_S, DEFAULT_MAX_REPLAY_PER_SUBSCRIBE)
from .api.publisher import Publisher
from .client.client import ChannelMessage, Client
from .console import cli as console_cli
from .console.settings import CONSOLE_BOUNDS
from .errors import SenteLiteError
from .brokers.publish_ids import DEFAULT_PUBLISH_IDS_MAX, DEFAULT_PUBLISH_IDS_PER_PUBLISHER
from .server.server import (DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_MESSAGE_BYTES,
                            DEFAULT_MAX_QUEUED_BYTES_PER_CONN, Server)
from .core.jwt_tokens import JWT, MAX_LEEWAY_S, SUPPORTED_ALGORITHMS, mint
from .wire.tracing import new_traceparent, trace_id

DEFAULT_PORT = 8765
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}/chsk"


def _resolve_url(args: argparse.Namespace) -> str:
    if args.port_file:
        return str(discovery.read_port_file(args.port_file, timeout=args.timeout)["url"])
    return str(args.url)


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM: installed before anything starts, so a signal
    that comes as soon as the URL is printed still stops cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait_for(stop: threading.Event) -> None:
    while not stop.wait(0.5):
        pass


#: Prefix of the environment variables ``serve`` reads (``--max-connections`` <-> ``SENTE_LITE_MAX_CONNECTIONS``).
ENV_PREFIX = "SENTE_LITE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingError(ValueError):
    """A ``serve`` setting (flag or environment variable) with a value that cannot be used."""


@dataclass(frozen=True)
class Setting:
    """One ``serve`` setting: a flag, its environment variable, its type and default."""

    flag: str
    kind: str  # "str", "int", "float", "bool", "list"
    default: Any
    help: str
    server_arg: Optional[str] = None  # the Server(...) keyword it sets, when it maps one to one
    bound: Optional[lim.Bound] = None  # a number's range, when it is not a Server keyword's

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


SERVE_SETTINGS = (
    Setting("--config", "str", None, "a TOML file of settings: any setting here by its name "
            "(max_connections = 5000, allowed_origin = [\"https://a.example\"]) and channel "
            "namespaces as [namespaces.NAME] tables (subscribe, publish: docs/security.md); a flag "
            "or environment variable wins over the file"),
    Setting("--host", "str", "127.0.0.1", "interface to listen on (0.0.0.0: every interface)"),
    Setting("--port", "int", DEFAULT_PORT, "TCP port; 0 picks a free one"),
    Setting("--path", "str", "/chsk", "WebSocket endpoint path", "path"),
    Setting("--port-file", "str", None, "write {host, port, url, pid, server-id} here once listening",
            "port_file"),
    Setting("--allowed-origin", "list", None,
            "an Origin browsers may connect from, e.g. https://app.example.com (repeatable; '*' allows "
            "any; env: comma-separated). Pages of the server's own origin are always allowed; default: "
            "pages of the server's own host", "allowed_origins"),
    Setting("--csrf", "bool", False, "require a per-client CSRF token (?csrf-token=; pages get it from "
            "GET /csrf-token or the handshake)", "csrf"),
    Setting("--csrf-secret", "str", None, "secret of the CSRF tokens (16+ bytes; default random per start, so "
            "a restart invalidates tokens); prefer the environment variable to a flag", "csrf_secret"),
    Setting("--max-connections", "int", lim.DEFAULT_MAX_CONNECTIONS,
            "connections served at once; more are refused with 503", "max_connections"),
    Setting("--max-message-bytes", "int", DEFAULT_MAX_MESSAGE_BYTES,
            "largest frame accepted; a larger one closes its connection with 1009", "max_message_bytes"),
    Setting("--max-queued-bytes-per-conn", "int", DEFAULT_MAX_QUEUED_BYTES_PER_CONN,
            "outbound bytes queued for one connection; more closes it with 4001 (slow consumer)",
            "max_queued_bytes_per_conn"),
    Setting("--max-subscriptions-per-conn", "int", lim.DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN,
            "channels one connection may hold (limit-exceeded beyond)", "max_subscriptions_per_conn"),
    Setting("--rate-limit", "float", lim.DEFAULT_RATE_LIMIT,
            "frames per second one connection may send (rate-limited beyond); 0 turns it off", "rate_limit"),
    Setting("--heartbeat-ms", "int", DEFAULT_HEARTBEAT_MS,
            "ping every connection this often; one silent for 3x this is closed (4000)", "heartbeat_ms"),
    Setting("--broker", "str", None, "share channels, history, users and presence with every server "
            "on this Redis, e.g. redis://127.0.0.1:6379/0 (needs pip install 'sente-lite[redis]'). "
            "Default: this process only", "broker"),
    Setting("--no-metrics", "bool", False, "do not serve GET /metrics"),
    Setting("--demo", "bool", False, "serve a live demo page (chat over channels) at GET /", "demo"),
    Setting("--compression", "str", None, "permessage-deflate for peers that offer it: 'deflate' "
            "(default: off)", "compression"),
    Setting("--tracing", "bool", False, "emit OpenTelemetry spans for traced messages (needs the "
            "[otel] extra)", "tracing"),
    Setting("--history-size", "int", DEFAULT_HISTORY_SIZE, "messages kept per channel for "
            "recovery (0: off)", "history_size"),
    Setting("--history-ttl-s", "float", DEFAULT_HISTORY_TTL_S, "seconds a message stays in its "
            "channel's history", "history_ttl_s"),
    Setting("--max-fragments", "int", lim.DEFAULT_MAX_FRAGMENTS, "frames one fragmented message "
            "may arrive in; more closes the connection with 1008", "max_fragments"),
    Setting("--fragment-timeout", "float", None, "seconds a fragmented message may stay unfinished "
            "before 1008 (default: the heartbeat timeout)", "fragment_timeout"),
    Setting("--max-inbound-frames", "int", lim.DEFAULT_MAX_INBOUND_FRAMES, "frames of one "
            "connection waiting for its handlers before its socket is not read", "max_inbound_frames"),
    Setting("--max-inbound-bytes", "int", lim.DEFAULT_MAX_INBOUND_BYTES, "bytes of those frames "
            "before its socket is not read", "max_inbound_bytes"),
    Setting("--history-max-bytes-per-channel", "int", DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL,
            "bytes of messages kept in one channel's history (the oldest go first beyond)",
            "history_max_bytes_per_channel"),
    Setting("--history-max-bytes-total", "int", DEFAULT_HISTORY_MAX_BYTES_TOTAL,
            "bytes of messages kept in the history of every channel together (the oldest go "
            "first beyond)", "history_max_bytes_total"),
    Setting("--max-replay-per-subscribe", "int", DEFAULT_MAX_REPLAY_PER_SUBSCRIBE,
            "messages one subscribe with since may replay (recovered: false, replay-limit "
            "beyond)", "max_replay_per_subscribe"),
    Setting("--max-history-page", "int", lim.DEFAULT_MAX_HISTORY_PAGE, "messages one history "
            "page holds (a larger limit is capped and counted: history_pages_capped)",
            "max_history_page"),
    Setting("--max-history-reads-per-conn", "int", lim.DEFAULT_MAX_HISTORY_READS_PER_CONN,
            "history reads of one connection in flight (limit-exceeded beyond)",
            "max_history_reads_per_conn"),
    Setting("--log-level", "str", "WARNING", "log level: " + ", ".join(LOG_LEVELS)),
    Setting("--publish-ids-per-publisher", "int", DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
            "publish ids remembered per publisher for deduplication; its oldest are forgotten "
            "early beyond (counted: publish_ids_evicted)", "publish_ids_per_publisher"),
    Setting("--publish-ids-max", "int", DEFAULT_PUBLISH_IDS_MAX,
            "publish ids remembered in all; the oldest are forgotten early beyond (counted: "
            "publish_ids_evicted)", "publish_ids_max"),
    Setting("--api-key", "list", None, "turn the HTTP server API on (POST /api/<method>) with this "
            "key (repeatable, for rotation; env: comma-separated); prefer the variable to a flag",
            "api_keys"),
    Setting("--api-allow-plaintext", "bool", False, "serve the API on a non-loopback --host "
            "without TLS (behind a TLS-terminating proxy)", "api_insecure_ok"),
    Setting("--api-max-body-bytes", "int", lim.DEFAULT_API_MAX_BODY_BYTES,
            "largest API request body; a larger one is refused 413", "api_max_body_bytes"),
    Setting("--api-rate-limit", "float", lim.DEFAULT_API_RATE_LIMIT,
            "API requests per second per key (429 beyond); 0 turns it off", "api_rate_limit"),
    Setting("--console", "bool", False, "serve a remote Python console (nREPL) on 127.0.0.1 and write "
            "./.nrepl-port (sente-lite console connects to it); see docs/console.md"),
    Setting("--console-port", "int", 0, "the console's TCP port on 127.0.0.1 (0: a free one)",
            bound=CONSOLE_BOUNDS["port"]),
    Setting("--console-user", "list", None, "a uid (set by an authenticate hook) allowed to use the console "
            "over the WebSocket (repeatable; env: comma-separated)"),
    Setting("--jwt-key", "list", None, "admit only upgrades with a JWT signed with this key (an "
            "HMAC secret; repeatable, for rotation; env: comma-separated); prefer the variable "
            "to a flag. Needs pip install 'sente-lite[jwt]'"),
    Setting("--jwt-key-file", "list", None, "a file holding a JWT verification key: a PEM public "
            "key, an HMAC secret, or a JWKS document (re-read when it changes); repeatable"),
    Setting("--jwt-algorithm", "list", None, "an algorithm JWTs may use (repeatable; default "
            f"HS256; one of {', '.join(SUPPORTED_ALGORITHMS)}; never none)"),
    Setting("--jwt-audience", "str", None, "the aud claim every JWT must carry"),
    Setting("--jwt-issuer", "str", None, "the iss claim every JWT must carry"),
    Setting("--jwt-leeway", "float", 0.0, "seconds of clock skew accepted on exp, nbf and iat",
            bound=lim.Bound(0.0, MAX_LEEWAY_S, unit=" seconds")),
)
#: Settings for which 0 means "no limit" (None).
_ZERO_IS_OFF = ("rate_limit", "api_rate_limit")


def bound_of(setting: Setting) -> lim.Bound:
    """The range of a numeric ``setting``."""
    return setting.bound or lim.SERVER_BOUNDS[setting.server_arg or setting.dest]


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _parse(setting: Setting, text: str, source: str) -> Any:
    try:
        if setting.kind == "int":
            return int(text)
        if setting.kind == "float":
            return float(text)
    except ValueError:
        bound = bound_of(setting).describe().replace(" (or None)", "")
        raise SettingError(f"{source}={text!r}: not a{'n integer' if setting.kind == 'int' else ' number'} "
                           f"(must be {bound})") from None
    if setting.kind == "bool":
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise SettingError(f"{source}={text!r}: use one of 1/0, true/false, yes/no, on/off")
    if setting.kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def resolve_serve_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Dict[str, Any]:
    """Each setting's value: the flag when given, else its ``SENTE_LITE_*`` variable, else
    the ``--config`` file's, else the default; ``namespaces`` from the file (or None)."""
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    config = read_config(config_path) if config_path else {}
    values: Dict[str, Any] = {"namespaces": config.pop("namespaces", None)}
    for setting in SERVE_SETTINGS:
        given = getattr(args, setting.dest, None)
        if given is not None and given is not False:
            values[setting.dest] = _checked(setting, given, setting.flag, str(given))
        elif setting.env in environ:
            text = environ[setting.env]
            values[setting.dest] = _checked(setting, _parse(setting, text, setting.env),
                                            setting.env, text)
        elif setting.dest in config:
            given = config[setting.dest]
            values[setting.dest] = _checked(setting, given, f"{config_path}: {setting.dest}", repr(given))
        else:
            values[setting.dest] = setting.default
    level = str(values["log_level"]).upper()
    if level not in LOG_LEVELS:
        raise SettingError(f"log level {values['log_level']!r}: use one of {', '.join(LOG_LEVELS)}")
    values["log_level"] = level
    return values


def _load_toml(path: str) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            raise SettingError("--config needs Python 3.11+ (tomllib) or the tomli package: "
                               "pip install 'sente-lite[toml]'") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise SettingError(f"--config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"--config {path!r} is not valid TOML: {exc}") from None


#: Python types a ``--config`` value of each setting kind may have.
_CONFIG_TYPES: Dict[str, Tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float),
                                              "bool": (bool,), "list": (list, str)}


def read_config(path: str) -> Dict[str, Any]:
    """The settings of the TOML file at ``path``, by their names (``max_connections``), and
    its ``namespaces`` tables; :class:`SettingError` naming a key that is no setting or a
    value of the wrong type."""
    raw = _load_toml(path)
    by_name = {s.dest: s for s in SERVE_SETTINGS if s.dest != "config"}
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if key == "namespaces":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise SettingError(f"--config {path!r}: namespaces must be tables, "
                                   "[namespaces.NAME] with subscribe/publish")
            out["namespaces"] = value
            continue
        setting = by_name.get(key.replace("-", "_"))
        if setting is None:
            raise SettingError(f"--config {path!r}: {key!r} is not a setting (the settings are the "
                               "flags of sente-lite serve, by name: max_connections, allowed_origin, ...)")
        wrong_bool = isinstance(value, bool) and setting.kind != "bool"
        if wrong_bool or not isinstance(value, _CONFIG_TYPES[setting.kind]) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)):
            raise SettingError(f"--config {path!r}: {key} = {value!r}: expected "
                               f"{'a list of strings' if setting.kind == 'list' else 'a ' + setting.kind}")
        out[setting.dest] = [value] if setting.kind == "list" and isinstance(value, str) else value
    return out


def _checked(setting: Setting, value: Any, source: str, text: str) -> Any:
    """``value`` of a numeric ``setting`` when it is in its range (``--rate-limit`` 0
    turns the limit off), else :class:`SettingError` naming ``source`` and the range."""
    if setting.kind not in ("int", "float"):
        return value
    if setting.dest in _ZERO_IS_OFF and value == 0:
        return None
    problem = bound_of(setting).problem(value)
    if problem is not None:
        off = " (0 turns it off)" if setting.dest in _ZERO_IS_OFF else ""
        raise SettingError(f"{source}={text!r}: {problem.replace(' (or None)', '')}{off}")
    return value


def server_from_settings(values: Mapping[str, Any]) -> Server:
    """The :class:`Server` that :func:`resolve_serve_settings`' values describe (not started)."""
    kwargs = {s.server_arg: values[s.dest] for s in SERVE_SETTINGS if s.server_arg}
    if values.get("console"):
        from .console import Console
        kwargs["console"] = Console(port=values["console_port"],
                                    console_users=tuple(values["console_user"] or ()))
    jwt = jwt_from_settings(values)
    if jwt is not None:
        kwargs["jwt"] = jwt
    if values.get("namespaces") is not None:
        kwargs["namespaces"] = values["namespaces"]
    return Server(values["host"], values["port"], expose_metrics=not values["no_metrics"], **kwargs)


def jwt_from_settings(values: Mapping[str, Any]) -> Optional[JWT]:
    """The :class:`JWT` of the ``--jwt-*`` settings, or None when no key is given."""
    keys: List[Any] = list(values.get("jwt_key") or ())
    jwks_file: Optional[str] = None
    for path in values.get("jwt_key_file") or ():
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise SettingError(f"--jwt-key-file {path!r}: {exc.strerror}") from None
        if raw.lstrip().startswith(b"{"):
            if jwks_file is not None:
                raise SettingError("--jwt-key-file: give at most one JWKS document")
            jwks_file = path
        else:
            keys.append(raw if b"-----BEGIN" in raw else raw.strip())
    if not keys and jwks_file is None:
        if values.get("jwt_algorithm") or values.get("jwt_audience") or values.get("jwt_issuer"):
            raise SettingError("--jwt-* settings need --jwt-key or --jwt-key-file")
        return None
    return JWT(keys or None, algorithms=values.get("jwt_algorithm") or ("HS256",),
               audience=values.get("jwt_audience"), issuer=values.get("jwt_issuer"),
               leeway=values.get("jwt_leeway") or 0.0, jwks_file=jwks_file)


def cmd_token(args: argparse.Namespace) -> int:
    """Print a signed JWT connection token, or with ``--channel`` a subscription token
    (for tests and operators)."""
    key_text = args.key or os.environ.get(ENV_PREFIX + "JWT_KEY", "").split(",")[0].strip()
    if args.key_file:
        with open(args.key_file, "rb") as f:
            raw = f.read()
        key: Any = raw if b"-----BEGIN" in raw else raw.strip()
    elif key_text:
        key = key_text
    else:
        print(f"error: give --key, --key-file or {ENV_PREFIX}JWT_KEY", file=sys.stderr)
        return 2
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except ValueError as exc:
            print(f"error: --info is not valid JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(info, dict):
            print("error: --info must be a JSON object", file=sys.stderr)
            return 2
    print(mint(args.sub, args.ttl, key, args.alg, audience=args.aud, issuer=args.iss, info=info,
               kid=args.kid, channel=args.channel), flush=True)
    return 0


def _add_token_command(sub: Any) -> None:
    t = sub.add_parser("token", help="print a signed JWT connection token",
                       description="Print a JWT for Server(jwt=...) / serve --jwt-key: claims sub, "
                       "iat, exp (now + --ttl), and aud, iss, info when given. Needs pip install "
                       "'sente-lite[jwt]'.")
    t.add_argument("--sub", required=True, help="the uid the token grants")
    t.add_argument("--ttl", type=float, default=3600.0, help="seconds it is valid (default 3600)")
    t.add_argument("--key", help=f"the signing key (HMAC secret; default: env {ENV_PREFIX}JWT_KEY)")
    t.add_argument("--key-file", help="a file holding the signing key (a PEM private key for "
                   "RS*/ES*/PS*/EdDSA, or an HMAC secret)")
    t.add_argument("--alg", default="HS256", choices=SUPPORTED_ALGORITHMS)
    t.add_argument("--aud", help="the aud claim")
    t.add_argument("--iss", help="the iss claim")
    t.add_argument("--kid", help="the key id in the header (to pick a key of a JWKS)")
    t.add_argument("--info", help="the info claim, a JSON object (kept on the connection)")
    t.add_argument("--channel", help="mint a subscription token for this channel-id (claim "
                   "channel) instead of a connection token")
    t.set_defaults(func=cmd_token)


def cmd_serve(args: argparse.Namespace) -> int:
    values = resolve_serve_settings(args)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else values["log_level"])
    server = server_from_settings(values)
    stop = _stop_on_signal()
    with server:
        print(server.url, flush=True)
        if server.demo:
            print(f"demo page: http://{server.host}:{server.port}/", file=sys.stderr, flush=True)
        _wait_for(stop)
    return 0


def cmd_sub(args: argparse.Namespace) -> int:
    def show(msg: ChannelMessage) -> None:
        line = {"channel-id": msg.channel_id, "offset": msg.offset, "epoch": msg.epoch,
                "from": msg.from_uid, "data": msg.data}
        if args.trace:
            line["traceparent"] = msg.traceparent
            line["trace-id"] = trace_id(msg.traceparent) if msg.traceparent else None
        print(json.dumps(line), flush=True)

    stop = _stop_on_signal()
    with Client(_resolve_url(args)) as client:
        if not client.wait_connected(args.timeout):
            print(f"error: could not connect to {client.url} within {args.timeout}s", file=sys.stderr)
            return 1
        client.subscribe(args.channel, show, timeout=args.timeout)
        _wait_for(stop)
    return 0


def cmd_pub(args: argparse.Namespace) -> int:
    try:
        data: Any = json.loads(args.json)
    except ValueError as exc:
        print(f"error: JSON argument is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if args.api or args.broker:
        return _pub_without_websocket(args, data)
    if args.idempotency_key or args.api_key:
        print("error: --idempotency-key and --api-key go with --api or --broker", file=sys.stderr)
        return 2
    with Client(_resolve_url(args), auto_reconnect=False) as client:
        if not client.wait_connected(args.timeout):
            print(f"error: could not connect to {client.url} within {args.timeout}s", file=sys.stderr)
            return 1
        reply = client.publish(args.channel, data, ack=True, timeout=args.timeout,
                               traceparent=new_traceparent() if args.trace else None)
    print(json.dumps(reply), flush=True)
    return 0


def _pub_without_websocket(args: argparse.Namespace, data: Any) -> int:
    """``pub --api URL`` (server API) or ``pub --broker URL`` (Redis): a :class:`Publisher`."""
    api_key = args.api_key or (os.environ.get(ENV_PREFIX + "API_KEY", "").split(",")[0].strip())
    if args.api and not api_key:
        print(f"error: --api needs --api-key (or {ENV_PREFIX}API_KEY)", file=sys.stderr)
        return 2
    with Publisher(args.api or args.broker, api_key=api_key or None, timeout=args.timeout) as pub:
        published = pub.publish(args.channel, data, idempotency_key=args.idempotency_key,
                                traceparent=new_traceparent() if args.trace else None)
    print(json.dumps({"channel-id": published.channel_id, "offset": published.offset,
                      "epoch": published.epoch, "delivered": published.delivered,
                      "duplicate": published.duplicate}), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sente-lite", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run a server until SIGINT/SIGTERM",
        description="Run a sente_lite server until SIGINT/SIGTERM. Prints its WebSocket URL. Every "
        f"setting is a flag or an environment variable {ENV_PREFIX}<FLAG> (e.g. --max-connections or "
        f"{ENV_PREFIX}MAX_CONNECTIONS); a flag wins over the variable. Also served on the same port: "
        "/health, /metrics, /csrf-token, /sente_lite.js (the browser client), /sente_lite.mjs.")
    for setting in SERVE_SETTINGS:
        text = f"{setting.help} [env {setting.env}"
        text += f"; default {setting.default}]" if setting.default not in (None, False) else "]"
        text = text.replace("%", "%%")
        if setting.kind == "bool":
            serve.add_argument(setting.flag, action="store_true", default=None, help=text)
        elif setting.kind == "list":
            serve.add_argument(setting.flag, action="append", default=None,
                               metavar=setting.dest.split("_")[-1].upper(), help=text)
        else:
            conv: Callable[[str], Any] = {"int": int, "float": float}.get(setting.kind, str)
            serve.add_argument(setting.flag, type=conv, default=None, help=text,
                               choices=LOG_LEVELS if setting.flag == "--log-level" else None)
    serve.set_defaults(func=cmd_serve)

    for name, func, helptext in (("sub", cmd_sub, "print a channel's messages as JSON lines"),
                                 ("pub", cmd_pub, "publish one JSON value (with ack)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("channel")
        if name == "pub":
            p.add_argument("json", help="the data, as JSON text")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--url", default=DEFAULT_URL)
        where.add_argument("--port-file", help="read the server URL from this port file")
        if name == "pub":
            where.add_argument("--api", metavar="URL", help="publish through the server API, e.g. "
                               "http://127.0.0.1:8765 (needs --api-key), no WebSocket")
            where.add_argument("--broker", metavar="URL", help="publish straight into the Redis "
                               "broker, e.g. redis://127.0.0.1:6379/0 (extra [redis]), no server")
            p.add_argument("--api-key", help=f"key for --api (default: env {ENV_PREFIX}API_KEY)")
            p.add_argument("--idempotency-key", help="publish id: a resend with the same one is "
                           "delivered once (--api, --broker)")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds for connect/ack")
        p.add_argument("--trace", action="store_true",
                       help="show each message's traceparent and trace id" if name == "sub" else
                       "publish with a new W3C traceparent (the reply shows it)")
        p.set_defaults(func=func)

    _add_token_command(sub)
    console_cli.add_subcommand(sub)
    try:
        from .bench import fanout as bench
    except ImportError:  # pragma: no cover - bench ships with the package
        bench = None  # type: ignore[assignment]
    if bench is not None and hasattr(bench, "add_arguments"):
        b = sub.add_parser("bench", help="fan-out benchmark (see README)")
        bench.add_arguments(b)
        b.set_defaults(func=lambda a: bench.run(a))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (SenteLiteError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # an optional extra that is not installed: its message names it
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
