"""Every numeric setting is finite and in range: Server keywords, ``sente-lite serve``
flags and ``SENTE_LITE_*`` variables. A bad value is refused with an error naming the
setting and what it may be; it never turns a limit off (``rate_limit=nan`` used to)."""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from sente_lite import Client, Server, cli
from sente_lite import limits as lim
from support import REPO

NOT_NUMBERS = ["10", "nan", b"1", [1], True, False, object()]
NON_FINITE = [math.nan, math.inf, -math.inf]
HUGE = [10 ** 30, 1e300]
#: Numeric keywords bounded elsewhere (a range of milliseconds of their own).
OWN_CHECKS = {"write_delay_ms"}


def numeric_keywords(cls: Any = Server) -> Dict[str, Any]:
    """Every keyword of ``cls`` whose default is a number, or an Optional number (None)."""
    out = {}
    for name, param in inspect.signature(cls).parameters.items():
        default = param.default
        annotation = str(param.annotation)
        if isinstance(default, bool):
            continue
        if isinstance(default, (int, float)) or (default is None and (
                "int" in annotation or "float" in annotation)):
            out[name] = default
    return out


def test_every_numeric_keyword_has_a_bound() -> None:
    names = set(numeric_keywords())
    assert {"rate_limit", "rate_burst", "heartbeat_timeout_ms", "port", "history_ttl_s"} <= names
    assert names - OWN_CHECKS == set(lim.SERVER_BOUNDS)
    assert set(numeric_keywords(Client)) - {"read_coalesce_ms", "send_buf_ms"} == set(lim.CLIENT_BOUNDS)


def bad_values(bound: lim.Bound) -> list:
    """Values ``bound`` refuses: not numbers, not finite, huge, out of range, wrong kind."""
    bad = NOT_NUMBERS + NON_FINITE + HUGE + [-1, bound.maximum + 1, bound.minimum - 0.5]
    if bound.above:
        bad.append(bound.minimum)
    if bound.integer:
        bad += [1.5, float(max(bound.minimum, 1))]
    if not bound.none_ok:
        bad.append(None)
    return bad


@pytest.mark.parametrize("name", sorted(lim.SERVER_BOUNDS))
def test_server_refuses_every_bad_value_naming_the_setting(name: str) -> None:
    for value in bad_values(lim.SERVER_BOUNDS[name]):
        with pytest.raises(ValueError, match=name) as info:
            Server(**{name: value})
        assert "must be" in str(info.value), value
        assert isinstance(info.value, TypeError)  # either kind of except catches it


@pytest.mark.parametrize("name", sorted(lim.CLIENT_BOUNDS))
def test_client_refuses_every_bad_value_naming_the_setting(name: str) -> None:
    bound = lim.CLIENT_BOUNDS[name]
    for value in bad_values(bound):
        with pytest.raises(ValueError, match=f"{name} must be"):
            Client("ws://127.0.0.1:9/chsk", start=False, **{name: value})
    for value in (bound.minimum + (1 if bound.integer else 0.001) if bound.above else bound.minimum,
                  bound.maximum):
        Client("ws://127.0.0.1:9/chsk", start=False,
               **{name: int(value) if bound.integer else value})  # not started: no thread


@pytest.mark.parametrize("name", sorted(lim.SERVER_BOUNDS))
def test_server_accepts_the_edges_of_every_range(name: str) -> None:
    bound = lim.SERVER_BOUNDS[name]
    threads = {"min_handler_threads": 1, "max_handler_threads": 1024}
    low = bound.minimum + (1 if bound.above and bound.integer else 0.001 if bound.above else 0)
    for value in (low, bound.maximum, *([None] if bound.none_ok else [])):
        if bound.integer and value is not None:
            value = int(value)
        kwargs = dict(threads, **{name: value})
        if name == "publish_dedup_s" and value is not None:
            kwargs["history_ttl_s"] = value
        if name == "history_ttl_s":
            kwargs["publish_dedup_s"] = value
        if name == "publish_ids_per_publisher":  # may not exceed publish_ids_max
            kwargs["publish_ids_max"] = value
        if name == "publish_ids_max":
            kwargs["publish_ids_per_publisher"] = value
        Server(**kwargs)  # not started: nothing to stop


def test_nan_rate_limit_no_longer_turns_rate_limiting_off() -> None:
    for value in (math.nan, math.inf, -1.0, 0, 0.0, "100"):
        with pytest.raises(ValueError, match="rate_limit must be a finite number > 0"):
            Server(rate_limit=value)
    assert Server(rate_limit=None).rate_limit is None  # off only when asked for


def serve_settings(argv: Any = (), env: Any = None) -> Dict[str, Any]:
    args = cli.build_parser().parse_args(["serve", *argv])
    return cli.resolve_serve_settings(args, env or {})


NUMERIC_SERVE = [s for s in cli.SERVE_SETTINGS if s.kind in ("int", "float")]


@pytest.mark.parametrize("setting", NUMERIC_SERVE, ids=[s.flag for s in NUMERIC_SERVE])
def test_serve_flags_and_variables_refuse_bad_numbers_naming_them(setting: cli.Setting) -> None:
    bad = ["nan", "inf", "-inf", "-1", "1e999", "99999999999999999999"]
    if setting.kind == "float":
        bad += ["NaN", "Infinity"]
    if setting.dest not in ("rate_limit", "api_rate_limit", "port", "history_size",
                            "max_replay_per_subscribe", "console_port", "jwt_leeway"):
        bad.append("0")  # 0 is allowed only where it means something (off, any free port)
    allowed = cli.bound_of(setting).describe().replace(" (or None)", "")
    for text in bad:
        with pytest.raises(cli.SettingError) as info:
            serve_settings([], {setting.env: text})
        assert str(info.value).startswith(f"{setting.env}={text!r}: "), info.value
        assert f"must be {allowed}" in str(info.value), info.value
        if setting.kind == "float" or text.lstrip("-").isdigit():
            with pytest.raises(cli.SettingError, match=f"{setting.flag}="):
                serve_settings([f"{setting.flag}={text}"])
    with pytest.raises(cli.SettingError, match=setting.env):
        serve_settings([], {setting.env: "lots"})
    default = serve_settings()[setting.dest]
    if setting.default is not None:  # None: derived from other settings (fragment_timeout)
        assert cli.server_from_settings(serve_settings([], {setting.env: str(setting.default)})) is not None
    assert default == setting.default


def test_serve_rate_limit_zero_is_off_and_a_negative_one_is_an_error() -> None:
    assert serve_settings(["--rate-limit", "0"])["rate_limit"] is None
    assert serve_settings([], {"SENTE_LITE_RATE_LIMIT": "0"})["rate_limit"] is None
    assert serve_settings([], {"SENTE_LITE_RATE_LIMIT": "250.5"})["rate_limit"] == 250.5
    assert serve_settings(["--api-rate-limit", "0"])["api_rate_limit"] is None
    assert serve_settings([], {"SENTE_LITE_API_RATE_LIMIT": "0"})["api_rate_limit"] is None
    with pytest.raises(cli.SettingError, match="0 turns it off"):
        serve_settings(["--rate-limit=-5"])


def test_serve_process_exits_with_the_setting_named() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), SENTE_LITE_RATE_LIMIT="nan")
    done = subprocess.run([sys.executable, "-m", "sente_lite", "serve", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "SENTE_LITE_RATE_LIMIT='nan': must be a finite number > 0" in done.stderr
