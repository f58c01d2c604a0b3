"""``sente-lite serve``: every setting as a flag or a SENTE_LITE_* variable, and a real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sente_lite import cli
from support import REPO



def settings(argv, env=None):
    args = cli.build_parser().parse_args(["serve", *argv])
    return cli.resolve_serve_settings(args, env or {})


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    env = {"SENTE_LITE_MAX_CONNECTIONS": "7", "SENTE_LITE_CSRF": "yes", "SENTE_LITE_HEARTBEAT_MS": "900",
           "SENTE_LITE_ALLOWED_ORIGIN": "https://a.example, https://b.example", "SENTE_LITE_LOG_LEVEL": "info"}
    values = settings(["--max-connections", "9", "--allowed-origin", "https://c.example"], env)
    assert values["max_connections"] == 9  # flag
    assert values["csrf"] is True and values["heartbeat_ms"] == 900 and values["log_level"] == "INFO"  # env
    assert values["allowed_origin"] == ["https://c.example"]
    assert settings([], env)["allowed_origin"] == ["https://a.example", "https://b.example"]
    defaults = settings([])
    assert defaults["max_message_bytes"] == 1 << 20 and defaults["csrf"] is False and defaults["demo"] is False
    srv = cli.server_from_settings(settings(["--demo", "--max-message-bytes", "1000", "--rate-limit", "0"]))
    assert srv.demo and srv.max_message_bytes == 1000 and srv.rate_limit is None


@pytest.mark.parametrize("env, needle", [
    ({"SENTE_LITE_MAX_CONNECTIONS": "many"}, "SENTE_LITE_MAX_CONNECTIONS='many': not an integer"),
    ({"SENTE_LITE_DEMO": "maybe"}, "SENTE_LITE_DEMO='maybe'"),
    ({"SENTE_LITE_LOG_LEVEL": "LOUD"}, "log level 'LOUD'"),
])
def test_bad_environment_values_are_named(env, needle) -> None:
    with pytest.raises(cli.SettingError, match=needle.replace("(", r"\(")):
        settings([], env)


def test_every_setting_is_in_help() -> None:
    serve = cli.build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    for s in cli.SERVE_SETTINGS:
        assert s.flag in text and s.env in text


def test_serve_runs_from_environment_settings(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), SENTE_LITE_CSRF="1", SENTE_LITE_DEMO="true",
               SENTE_LITE_PORT="0", SENTE_LITE_PORT_FILE=str(tmp_path / "port.json"))
    proc = subprocess.Popen([sys.executable, "-m", "sente_lite", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/chsk"), url
        base = url.replace("ws://", "http://").removesuffix("/chsk")
        with urllib.request.urlopen(base + "/", timeout=10) as resp:
            assert b"sente_lite.mjs?v=" in resp.read()  # --demo via SENTE_LITE_DEMO
        with urllib.request.urlopen(base + "/csrf-token?client-id=x", timeout=10) as resp:
            assert json.loads(resp.read())["client-id"] == "x"  # --csrf via SENTE_LITE_CSRF
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "demo page: http://127.0.0.1:" in err
    assert not (tmp_path / "port.json").exists()  # removed on a clean stop


def test_serve_refuses_a_bad_setting_with_a_clear_error() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), SENTE_LITE_MAX_MESSAGE_BYTES="1MB")
    done = subprocess.run([sys.executable, "-m", "sente_lite", "serve", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "SENTE_LITE_MAX_MESSAGE_BYTES='1MB': not an integer" in done.stderr


def test_wire_and_history_settings_reach_the_server() -> None:
    srv = cli.server_from_settings(settings(
        ["--compression", "deflate", "--history-size", "5", "--history-ttl-s", "30"]))
    assert (srv.compression, srv.channels.registry.history.size, srv.channels.registry.history.ttl_s) == (
        "deflate", 5, 30.0)
    srv = cli.server_from_settings(settings([], {"SENTE_LITE_HISTORY_SIZE": "0"}))
    assert srv.compression is None and srv.channels.registry.history.size == 0
    with pytest.raises(ValueError):
        cli.server_from_settings(settings(["--compression", "gzip"]))


def test_history_api_bounds_reach_the_server_from_flags_environment_and_a_config_file(tmp_path: Path) -> None:
    srv = cli.server_from_settings(settings(
        ["--max-history-page", "7"], {"SENTE_LITE_MAX_HISTORY_READS_PER_CONN": "2"}))
    assert (srv.settings.max_history_page, srv.settings.max_history_reads_per_conn) == (7, 2)
    path = tmp_path / "serve.toml"
    path.write_text("max_history_page = 9\nmax_history_reads_per_conn = 3\n")
    srv = cli.server_from_settings(settings(["--config", str(path)]))
    assert (srv.settings.max_history_page, srv.settings.max_history_reads_per_conn) == (9, 3)
    for flag in ("--max-history-page", "--max-history-reads-per-conn"):
        with pytest.raises(ValueError, match=flag.lstrip("-")):
            cli.server_from_settings(settings([flag, "0"]))


def test_publish_id_bounds_reach_the_server() -> None:
    srv = cli.server_from_settings(settings(
        ["--publish-ids-per-publisher", "7"], {"SENTE_LITE_PUBLISH_IDS_MAX": "70"}))
    assert (srv.channels.registry.history.ids.per_publisher, srv.channels.registry.history.ids.max_ids) == (7, 70)
    with pytest.raises(ValueError, match="publish-ids-per-publisher"):
        cli.server_from_settings(settings(["--publish-ids-per-publisher", "0"]))


# -- JWT connection tokens -----------------------------------------------------------------------
JWT_KEY = "cli-test-secret-of-32-bytes-or-more"


def test_jwt_settings_from_flags_and_environment_reach_the_server(tmp_path: Path) -> None:
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install 'sente-lite[jwt]')")
    assert cli.server_from_settings(settings([])).settings.jwt is None
    srv = cli.server_from_settings(settings(
        ["--jwt-audience", "rt", "--jwt-leeway", "2.5"],
        {"SENTE_LITE_JWT_KEY": f"{JWT_KEY},old-secret-of-32-bytes-or-more-xx",
         "SENTE_LITE_JWT_ALGORITHM": "HS256,HS512", "SENTE_LITE_JWT_ISSUER": "auth"}))
    jwt = srv.settings.jwt
    assert jwt is not None and len(jwt.keys) == 2 and jwt.algorithms == ("HS256", "HS512")
    assert (jwt.audience, jwt.issuer, jwt.leeway) == ("rt", "auth", 2.5)
    secret = tmp_path / "secret.txt"
    secret.write_text(JWT_KEY + "\n")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0LW9mLTMyLWJ5dGVzLW9yLW1vcmUtLS0tLS0", "kid": "a"}]}))
    srv = cli.server_from_settings(settings(["--jwt-key-file", str(secret), "--jwt-key-file", str(jwks)]))
    assert srv.settings.jwt.keys == (JWT_KEY.encode(),) and srv.settings.jwt.jwks_file == str(jwks)
    with pytest.raises(cli.SettingError, match="need --jwt-key"):
        cli.server_from_settings(settings(["--jwt-audience", "rt"]))
    with pytest.raises(ValueError, match="never accepted"):
        cli.server_from_settings(settings(["--jwt-key", JWT_KEY, "--jwt-algorithm", "none"]))
    with pytest.raises(cli.SettingError, match="SENTE_LITE_JWT_LEEWAY"):
        settings([], {"SENTE_LITE_JWT_LEEWAY": "301"})


def test_token_command_prints_a_token_the_server_accepts(capsys, monkeypatch) -> None:
    monkeypatch.delenv("SENTE_LITE_JWT_KEY", raising=False)
    jwt = pytest.importorskip("jwt", reason="PyJWT is not installed (pip install 'sente-lite[jwt]')")
    assert cli.main(["token", "--sub", "alice", "--ttl", "60", "--key", JWT_KEY, "--aud", "rt",
                     "--iss", "auth", "--info", '{"name": "Alice"}']) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"], audience="rt", issuer="auth")
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60
    assert claims["info"] == {"name": "Alice"}
    assert cli.main(["token", "--sub", "a", "--key", JWT_KEY, "--info", "[1]"]) == 2
    assert cli.main(["token", "--sub", "a"]) == 2  # no key (and no SENTE_LITE_JWT_KEY here)
    assert "--key" in capsys.readouterr().err


CONFIG = """
max_connections = 77
allowed_origin = ["https://a.example", "https://b.example"]
csrf = true
heartbeat_ms = 1500

[namespaces.chat]
publish = "subscribers"

[namespaces.feed]
subscribe = "anyone"
publish = "server"

[namespaces.""]
"""


def test_a_config_file_sets_settings_and_namespaces_below_flags_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(CONFIG)
    values = settings(["--config", str(path), "--max-connections", "9"], {"SENTE_LITE_HEARTBEAT_MS": "900"})
    assert values["max_connections"] == 9  # the flag wins
    assert values["heartbeat_ms"] == 900  # the environment wins
    assert values["csrf"] is True and values["allowed_origin"] == ["https://a.example", "https://b.example"]
    srv = cli.server_from_settings(values)
    from sente_lite import Namespace
    assert srv.settings.namespaces.by_name == {"chat": Namespace(publish="subscribers"),
                                               "feed": Namespace(publish="server"), "": Namespace()}
    assert srv.settings.max_connections == 9 and srv.heartbeat_ms == 900 and srv.settings.csrf
    # the file named by the environment too; no file: no namespaces
    assert settings([], {"SENTE_LITE_CONFIG": str(path)})["max_connections"] == 77
    assert cli.server_from_settings(settings([])).settings.namespaces is None


@pytest.mark.parametrize("text, needle", [
    ("max_conections = 5", "'max_conections' is not a setting"),
    ("max_connections = '5'", "max_connections = '5': expected a int"),
    ("csrf = 1", "csrf = 1: expected a bool"),
    ("max_connections = true", "expected a int"),
    ("allowed_origin = [1]", "expected a list of strings"),
    ("max_connections = 0", "max_connections"),
    ("namespaces = 3", "namespaces must be tables"),
    ("max_connections = ", "is not valid TOML"),
])
def test_a_bad_config_file_is_refused_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(cli.SettingError, match=needle):
        settings(["--config", str(path)])


def test_a_config_file_with_a_bad_namespace_stops_serve_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[namespaces.chat]\npublish = "everyone"\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "sente_lite", "serve", "--port", "0", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Namespace publish must be one of" in done.stderr and "everyone" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "sente_lite", "serve", "--config", str(tmp_path / "none.toml")],
                             env=env, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "No such file" in missing.stderr
