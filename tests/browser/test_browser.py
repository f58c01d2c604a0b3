"""The browser client (sente_lite.js) in real headless Chromium against a real server.

Chromium is Debian's ``chromium`` driven by Playwright for Python (``executable_path``
below); the module is skipped, naming what is missing, when either is absent. One
browser per module, a fresh browser context (page) per test; each page loads the
client from the server (``/sente_lite.js`` or ``/sente_lite.mjs``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

from sente_lite import Server
from sente_lite.server import static
from support import WAIT_S, wait_until
from support import REPO

CHROMIUM = os.environ.get("SENTE_LITE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Page-side waits, in ms (generous: only reached when something is broken).
PAGE_WAIT_MS = int(WAIT_S * 1000)
#: Messages of the ordering test.
ORDER_MESSAGES = 1000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip, the [test] extra) is not "
                               "installed: the browser tests drive Chromium through it")
if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(f"chromium is not installed at {CHROMIUM} (Debian package 'chromium'; "
                "or set SENTE_LITE_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """``open_page(srv, module=False, origin=None)``: a page that loaded the client.

    The page is the server's ``/health`` document, opened at ``origin`` (default the
    server's own, ``http://127.0.0.1:<port>``; ``http://localhost:<port>`` is another
    origin of the same loopback server). A real document from a loopback address, so
    Chromium's local-network checks treat it as a local page, as a deployed one is.
    With ``module`` the page imports ``/sente_lite.mjs`` into ``window.SenteLite``,
    else it loads the classic ``/sente_lite.js``. Every context is closed after the test.
    """
    contexts: List[Any] = []

    def open_(srv: Server, module: bool = False, origin: Optional[str] = None) -> Any:
        ctx = browser.new_context()
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(PAGE_WAIT_MS)
        page.on("console", lambda m: print(f"[page {m.type}] {m.text}") if m.type in ("error", "warning") else None)
        server_origin = f"http://127.0.0.1:{srv.port}"
        page.goto(f"{origin or server_origin}/health")
        if module:
            page.add_script_tag(type="module", content=(
                f'import * as S from "{server_origin}{static.script_url(module=True)}";'
                "window.SenteLite = S; window.loaded = true;"))
        else:
            page.add_script_tag(url=f"{server_origin}{static.script_url()}")
            page.evaluate("window.loaded = !!window.SenteLite")
        page.wait_for_function("window.loaded === true")
        page.evaluate("window.WS_URL = %s" % json.dumps(srv.url))
        return page

    yield open_
    for ctx in contexts:
        ctx.close()


CONNECT = """async (opts) => {
  window.statuses = [];
  window.c = new SenteLite.Client(WS_URL, Object.assign({backoffBaseMs: 50, backoffMaxMs: 300}, opts || {}));
  c.onStatus(s => statuses.push(s));
  return await c.waitConnected(%d);
}""" % PAGE_WAIT_MS


def test_classic_script_and_es_module_both_work(make_server, open_page) -> None:
    srv = make_server()
    srv.on("app/add", lambda conn, data: sum(data))
    classic = open_page(srv)
    assert classic.evaluate("typeof window.SenteLite.Client") == "function"
    assert classic.evaluate(CONNECT) is True
    assert classic.evaluate("c.request('app/add', [1, 2])") == 3
    module = open_page(srv, module=True)
    exported = module.evaluate("Object.keys(SenteLite)")
    assert set(static.MODULE_EXPORTS) | {"default"} == set(exported)
    assert module.evaluate("SenteLite.VERSION") == classic.evaluate("SenteLite.VERSION")
    assert module.evaluate(CONNECT) is True
    assert module.evaluate("c.request('app/add', [40, 2])") == 42
    assert module.evaluate("c.uid") == module.evaluate("c.clientId")


def test_pubsub_browser_and_python_both_ways(make_server, make_client, open_page) -> None:
    srv = make_server()
    py = make_client(srv.url)
    py_got: List[Any] = []
    py.subscribe("room", py_got.append, timeout=WAIT_S)
    page = open_page(srv, module=True)
    assert page.evaluate(CONNECT) is True
    page.evaluate("window.got = []; c.subscribe('room', m => got.push(m))")
    # browser -> Python (and back to the page, which is subscribed too)
    reply = page.evaluate("c.publish('room', {text: 'hi from the page'}, {ack: true})")
    assert reply["channelId"] == "room" and reply["delivered"] == 2
    msg = wait_until(lambda: py_got and py_got[0], what="page message at the Python client")
    assert msg.data == {"text": "hi from the page"} and msg.from_uid == page.evaluate("c.uid")
    # Python -> browser
    py.publish("room", {"text": "hi from Python"}, ack=True, timeout=WAIT_S)
    page.wait_for_function("got.length === 2")
    got = page.evaluate("got")
    assert [m["data"]["text"] for m in got] == ["hi from the page", "hi from Python"]
    assert got[1]["from"] == py.uid and got[1]["offset"] == got[0]["offset"] + 1
    assert page.evaluate("c.stats().channelGaps") == 0


@pytest.mark.parametrize("packer", ["json", "msgpack"])
def test_bytes_page_and_python_both_ways(packer: str, make_server, make_client, open_page) -> None:
    """A page publishes a Uint8Array: Python subscribers of both packers get bytes; Python
    publishes bytes: the page gets a Uint8Array (protocol section 10), 1 MB included."""
    srv = make_server(max_message_bytes=2 << 20)
    pys = {name: make_client(srv.url, packer=name) for name in ("json", "msgpack")}
    py_got: dict = {name: [] for name in pys}
    for name, py in pys.items():
        py.subscribe("bin", py_got[name].append, timeout=WAIT_S)
    page = open_page(srv)
    assert page.evaluate(CONNECT, {"packer": packer}) is True
    assert page.evaluate("c.handshake.bytes") is True
    page.evaluate("""() => {
      window.got = [];
      const view = (v) => v instanceof Uint8Array ? {bytes: Array.from(v)}
        : Array.isArray(v) ? v.map(view)
        : v !== null && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, view(x)]))
        : v;
      window.raw = [];
      return c.subscribe('bin', m => { raw.push(m.data); got.push(raw.length === 3 ? null : view(m.data)); });
    }""")
    page.evaluate("c.publish('bin', {img: new Uint8Array([0, 1, 255]), e: new Uint8Array(0), "
                  "l: [new Uint8Array(300).fill(7)]}, {ack: true})")
    for name in pys:
        msg = wait_until(lambda: py_got[name] and py_got[name][0], what=f"the page's bytes at the {name} client")
        assert msg.data == {"img": b"\x00\x01\xff", "e": b"", "l": [b"\x07" * 300]}, name
    blob = os.urandom(1 << 20)
    pys["msgpack"].publish("bin", [b"\xfe", {"k": b""}], ack=True, timeout=WAIT_S)
    pys["json"].publish("bin", blob, ack=True, timeout=WAIT_S)
    page.wait_for_function("got.length === 3")
    got = page.evaluate("got.slice(0, 2)")
    assert got == [{"img": {"bytes": [0, 1, 255]}, "e": {"bytes": []}, "l": [{"bytes": [7] * 300}]},
                   [{"bytes": [254]}, {"k": {"bytes": []}}]]
    big = page.evaluate("""() => {
      const b = raw[2];
      let sum = 0;
      for (let i = 0; i < b.length; i++) { sum = (sum * 31 + b[i]) >>> 0; }
      return [b instanceof Uint8Array, b.length, sum];
    }""")
    want = 0
    for x in blob:
        want = (want * 31 + x) & 0xFFFFFFFF
    assert big == [True, len(blob), want]
    srv.on("app/echo", lambda conn, data: data)
    # without the runtime's own base64 (Uint8Array.fromBase64/toBase64): the atob/btoa path
    natives = page.evaluate("""async () => {
      const had = [typeof Uint8Array.fromBase64, typeof Uint8Array.prototype.toBase64];
      delete Uint8Array.fromBase64;
      delete Uint8Array.prototype.toBase64;
      const sent = new Uint8Array(70000).map((_, i) => (i * 13) & 0xff);
      const back = await c.request('app/echo', [sent, new Uint8Array(0)]);
      return had.concat([back[0] instanceof Uint8Array && back[0].length === sent.length
                         && back[0].every((x, i) => x === sent[i]), back[1].length]);
    }""")
    assert natives == ["function", "function", True, 0], natives  # Chromium has both, then neither
    assert page.evaluate("c.stats().badFramesFromServer") == 0


def test_request_reply_both_ways(make_server, open_page) -> None:
    srv = make_server()
    srv.on("app/add", lambda conn, data: sum(data))
    page = open_page(srv)
    assert page.evaluate(CONNECT) is True
    # browser -> server
    assert page.evaluate("c.request('app/add', [20, 22])") == 42
    err = page.evaluate("c.request('app/nobody', 1).then(() => null, e => [e.name, e.code])")
    assert err == ["RemoteError", "no-handler"]
    # server -> browser: a value, a Promise, a throw, no handler
    page.evaluate("""() => {
      c.on('app/double', x => x * 2);
      c.on('app/slow', x => new Promise(r => setTimeout(() => r({slow: x}), 20)));
      c.on('app/boom', () => { throw new Error('no'); });
    }""")
    conn_id = page.evaluate("c.connId")
    assert srv.request(conn_id, "app/double", 21, timeout=WAIT_S) == 42
    assert srv.request(conn_id, "app/slow", "x", timeout=WAIT_S) == {"slow": "x"}
    from sente_lite import RemoteError
    with pytest.raises(RemoteError) as info:
        srv.request(conn_id, "app/boom", timeout=WAIT_S)
    assert info.value.code == "handler-error"
    with pytest.raises(RemoteError) as info:
        srv.request(conn_id, "app/none", timeout=WAIT_S)
    assert info.value.code == "no-handler"


def test_msgpack_packer_in_the_page_with_a_python_json_client(make_server, make_client, open_page) -> None:
    pytest.importorskip("msgpack", reason="the server needs the [msgpack] extra for packer=msgpack")
    srv = make_server()
    srv.on("app/echo", lambda conn, data: {"echo": data, "packer": conn.packer.name})
    py = make_client(srv.url)
    py_got: List[Any] = []
    py.subscribe("room", py_got.append, timeout=WAIT_S)
    page = open_page(srv)
    frames: List[Any] = []  # (direction, str or bytes) of every WebSocket frame of the page

    def watch(ws: Any) -> None:
        ws.on("framesent", lambda payload: frames.append(("sent", payload)))
        ws.on("framereceived", lambda payload: frames.append(("received", payload)))

    page.on("websocket", watch)
    assert page.evaluate(CONNECT, {"packer": "msgpack"}) is True
    assert page.evaluate("[c.packer, c.handshake.packer]") == ["msgpack", "msgpack"]
    value = {"text": "héllo 😀", "ints": [0, -1, 255, -129, 65536, 2 ** 53 - 1], "float": 1.5,
             "nested": [{"a": None, "b": True}], "long": "x" * 300}
    assert page.evaluate("v => c.request('app/echo', v)", value) == {"echo": value, "packer": "msgpack"}
    page.evaluate("c.on('app/double', x => x * 2)")
    assert srv.request(page.evaluate("c.connId"), "app/double", 21, timeout=WAIT_S) == 42
    page.evaluate("window.got = []; c.subscribe('room', m => got.push(m))")
    reply = page.evaluate("c.publish('room', {text: 'from the msgpack page'}, {ack: true})")
    assert reply["delivered"] == 2
    msg = wait_until(lambda: py_got and py_got[0], what="page message at the Python JSON client")
    assert msg.data == {"text": "from the msgpack page"} and msg.from_uid == page.evaluate("c.uid")
    py.publish("room", {"text": "from Python", "n": [1, 2.5]}, ack=True, timeout=WAIT_S)
    page.wait_for_function("got.length === 2")
    assert [m["data"] for m in page.evaluate("got")] == [{"text": "from the msgpack page"},
                                                          {"text": "from Python", "n": [1, 2.5]}]
    assert page.evaluate("c.stats().badFramesFromServer") == 0
    assert frames and all(isinstance(payload, bytes) for _, payload in frames), \
        [(d, p[:40]) for d, p in frames if not isinstance(p, bytes)]
    assert {d for d, _ in frames} == {"sent", "received"}


def test_server_restart_page_reconnects_resubscribes_and_messages_flow(make_server, open_page) -> None:
    first = make_server()
    page = open_page(first)
    assert page.evaluate(CONNECT) is True
    page.evaluate("window.got = []; c.subscribe('news', m => got.push(m.data))")
    first.publish("news", "before")
    page.wait_for_function("got.length === 1")
    first_server_id = page.evaluate("c.serverId")
    first.stop()
    page.wait_for_function("statuses.includes('reconnecting')")
    second = make_server(port=first.port)  # the same port, a new server process state
    page.wait_for_function("c.status === 'connected' && c.serverId !== %s" % json.dumps(first_server_id))
    wait_until(lambda: second.channels.channels_of(page.evaluate("c.connId")) == ["news"],
               what="the page re-subscribed on the new server")
    second.publish("news", "after")
    page.wait_for_function("got.length === 2")
    assert page.evaluate("got") == ["before", "after"]
    assert page.evaluate("statuses")[-1] == "connected"
    assert page.evaluate("c.stats().handshakes") == 2


def test_page_of_another_origin_is_refused_with_a_clear_error(make_server, open_page) -> None:
    srv = make_server()
    # localhost is not the Host (127.0.0.1) of the server: another origin, refused with 403
    page = open_page(srv, origin=f"http://localhost:{srv.port}")
    err = page.evaluate("""async () => {
      window.c = new SenteLite.Client(WS_URL, {backoffBaseMs: 50});
      try { await c.waitConnected(%d); return null; }
      catch (e) { return {name: e.name, code: e.code, status: e.status, message: e.message}; }
    }""" % PAGE_WAIT_MS)
    assert err is not None, "the page connected from a refused origin"
    assert err["name"] == "ConnectRefused" and err["status"] == 403 and err["code"] == "refused"
    assert "HTTP 403" in err["message"] and "origin 'http://localhost" in err["message"]
    assert page.evaluate("[c.status, c.stats().reconnectAttempts]") == ["closed", 0]
    # the refused upgrade and the page's probe: nothing more, the page does not retry
    assert srv.stats()["handshakes_refused"]["origin"] == 2


def test_csrf_missing_token_refused_embedded_and_fetched_tokens_work(make_server, open_page) -> None:
    srv = make_server(csrf=True)
    page = open_page(srv)
    err = page.evaluate("""async () => {
      const c = new SenteLite.Client(WS_URL);
      return c.waitConnected(%d).then(() => null, e => [e.name, e.status, e.message]);
    }""" % PAGE_WAIT_MS)
    assert err[0] == "ConnectRefused" and err[1] == 403 and "csrf-token required" in err[2]
    # a token the application embedded in its page
    embedded = open_page(srv)
    embedded.evaluate("window.CSRF = %s" % json.dumps(srv.csrf_token("page-1")))  # as a page embeds it
    assert embedded.evaluate(CONNECT, {"clientId": "page-1", "csrfToken": embedded.evaluate("CSRF")}) is True
    # a token fetched from GET /csrf-token, at every (re)connect
    fetched = open_page(srv)
    assert fetched.evaluate("""async () => {
      const clientId = 'page-2';
      window.c = new SenteLite.Client(WS_URL, {clientId,
        csrfToken: () => SenteLite.fetchCsrfToken(WS_URL, clientId)});
      return await c.waitConnected(%d);
    }""" % PAGE_WAIT_MS) is True
    assert fetched.evaluate("c.csrfToken") == srv.csrf_token("page-2")


def test_thousand_messages_into_the_page_in_order(make_server, open_page) -> None:
    srv = make_server()
    page = open_page(srv)
    assert page.evaluate(CONNECT) is True
    start = page.evaluate("c.subscribe('bulk', m => got.push([m.offset, m.data])).then(a => a.offset)"
                          .replace("c.subscribe", "(window.got = [], c).subscribe"))
    for i in range(ORDER_MESSAGES):
        srv.publish("bulk", i)
    page.wait_for_function(f"got.length >= {ORDER_MESSAGES}")
    got = page.evaluate("got")
    assert got == [[start + i + 1, i] for i in range(ORDER_MESSAGES)]
    assert page.evaluate("c.stats().channelGaps") == 0


def test_demo_page_shows_connection_and_chat(make_server, make_client, browser) -> None:
    srv = make_server(demo=True)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.set_default_timeout(PAGE_WAIT_MS)
        page.goto(f"http://127.0.0.1:{srv.port}/")
        page.wait_for_function("document.getElementById('status-text').textContent === 'connected'")
        page.wait_for_function("demoClient.subscriptions().length === 3")
        page.fill("#what", "hello from the demo page")
        page.click("#send")
        page.wait_for_selector(".msg .text:text('hello from the demo page')")
        py = make_client(srv.url)
        py.publish("demo/general", {"name": "py", "text": "<b>not html</b>"}, ack=True, timeout=WAIT_S)
        page.wait_for_function("document.querySelectorAll('.msg').length === 2")
        assert page.inner_text(".msg:last-child .text") == "<b>not html</b>"  # shown as text
    finally:
        ctx.close()


def test_demo_page_connects_when_allowed_origins_lists_other_origins(browser) -> None:
    """``sente-lite serve --demo --allowed-origin https://app.example``: the demo page is the
    server's own origin, which stays allowed beside the listed one."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "sente_lite", "serve", "--demo", "--port", "0",
                             "--allowed-origin", "https://app.example"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = browser.new_context()
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("ws://127.0.0.1:"), url
        page = ctx.new_page()
        page.set_default_timeout(PAGE_WAIT_MS)
        page.goto(url.replace("ws://", "http://").removesuffix("/chsk") + "/")
        page.wait_for_function("document.getElementById('status-text').textContent === 'connected'")
        page.wait_for_function("demoClient.subscriptions().length === 3")
    finally:
        ctx.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S * 2)
    assert proc.returncode == 0, err
    assert "refused-upgrade" not in err, err


#: Publishes of the reconnect test, and how many times the server drops the page meanwhile.
RESEND_PUBLISHES = 1000
RESEND_DROPS = 5


def test_page_publishes_land_once_across_forced_reconnects(make_server, make_client, open_page) -> None:
    """Every publish carries an id and stays in the page's outbox until acknowledged: the
    server closing the page's connection 5 times mid-stream loses none and doubles none."""
    srv = make_server()
    py = make_client(srv.url)
    py_got: List[Any] = []
    py.subscribe("feed", py_got.append, timeout=WAIT_S)
    page = open_page(srv)
    assert page.evaluate(CONNECT, {"backoffBaseMs": 20, "backoffMaxMs": 100}) is True
    page.evaluate("window.got = []; c.subscribe('feed', m => got.push(m.data))")
    uid = page.evaluate("c.uid")
    chunk = RESEND_PUBLISHES // RESEND_DROPS
    for k in range(RESEND_DROPS):
        page.evaluate("([a, b]) => { for (let i = a; i < b; i++) { c.publish('feed', i); } }",
                      [k * chunk, (k + 1) * chunk])
        wait_until(lambda: srv.disconnect_user(uid) > 0, what="the page's connection to close")
    page.wait_for_function("c.connected && c.stats().unackedPublishes === 0")
    want = list(range(RESEND_PUBLISHES))
    wait_until(lambda: len(py_got) >= RESEND_PUBLISHES, what="every publish at the Python subscriber")
    page.wait_for_function(f"got.length >= {RESEND_PUBLISHES}")
    assert sorted(m.data for m in py_got) == want  # 0 lost, 0 duplicated
    assert sorted(page.evaluate("got")) == want
    stats = page.evaluate("c.stats()")
    # a connection closed before its handshake reached the page is not counted by the page
    assert stats["handshakes"] >= 2
    assert stats["publishErrors"] == 0


def test_page_reload_with_persisted_positions_resumes_every_channel(make_server, open_page) -> None:
    """persistPositions: a reloaded page subscribes with the stored positions and the server
    replays what it missed (recovered: true), once."""
    srv = make_server()
    page = open_page(srv)
    channels = ["a", "b", "c"]
    assert page.evaluate(CONNECT, {"persistPositions": True}) is True
    page.evaluate("chs => { window.got = []; chs.forEach(ch => c.subscribe(ch, m => got.push([ch, m.data]))); }",
                  channels)
    conn_id = page.evaluate("c.connId")
    wait_until(lambda: len(srv.channels.channels_of(conn_id)) == 3, what="three subscriptions")
    for ch in channels:
        srv.publish(ch, f"{ch}-before")
    page.wait_for_function("got.length === 3")
    page.reload()
    for ch in channels:  # while the page is away
        srv.publish(ch, f"{ch}-missed")
    page.add_script_tag(url=f"http://127.0.0.1:{srv.port}{static.script_url()}")
    page.evaluate("window.WS_URL = %s" % json.dumps(srv.url))
    assert page.evaluate(CONNECT, {"persistPositions": True}) is True
    answers = page.evaluate("""async chs => {
      window.got = []; window.recoveries = [];
      c.onRecovery(r => recoveries.push(r));
      return Promise.all(chs.map(ch => c.subscribe(ch, m => got.push([ch, m.data]))));
    }""", channels)
    assert [a["recovered"] for a in answers] == [True, True, True]
    page.wait_for_function("got.length === 3")
    assert sorted(page.evaluate("got")) == [[ch, f"{ch}-missed"] for ch in channels]
    recoveries = page.evaluate("recoveries")
    assert sorted((r["channelId"], r["recovered"], r["since"]["offset"]) for r in recoveries) == \
        [(ch, True, 1) for ch in channels]


def test_jwt_token_in_the_subprotocol_offer_refreshed_and_expired_refused(make_server, open_page) -> None:
    """Chromium sends the token as ``Sec-WebSocket-Protocol: sente-lite, bearer.<token>``
    (accepting the server's ``sente-lite``), refreshes it over the open socket, and a page with
    an expired token stops with the 401 its probe learns."""
    pytest.importorskip("jwt", reason="PyJWT is not installed (pip install 'sente-lite[jwt]')")
    from sente_lite import JWT
    from sente_lite.core.jwt_tokens import mint
    key = "browser-test-secret-of-32-bytes-or-more"
    srv = make_server(jwt=JWT(key=key), heartbeat_ms=1000)
    page = open_page(srv)
    # tokens of growing life (one a refresh): each later exp than the last
    page.evaluate("window.TOKENS = %s" % json.dumps([mint("pia", 3 * (i + 1), key) for i in range(6)]))
    assert page.evaluate("""async () => {
      window.c = new SenteLite.Client(WS_URL, {token: () => TOKENS.shift()});
      return await c.waitConnected(%d);
    }""" % PAGE_WAIT_MS) is True
    assert page.evaluate("c.uid") == "pia"
    assert "token=" not in page.evaluate("c._lastUrl")
    page.wait_for_function("c.stats().tokenRefreshes >= 1")
    assert page.evaluate("[c.stats().reconnectAttempts, c.status]") == [0, "connected"]
    expired = open_page(srv)
    err = expired.evaluate("""async (token) => {
      const c = new SenteLite.Client(WS_URL, {token});
      return c.waitConnected(%d).then(() => null, e => [e.name, e.status, e.message]);
    }""" % PAGE_WAIT_MS, mint("pia", -5, key))
    assert err[0] == "ConnectRefused" and err[1] == 401 and "token expired" in err[2]


#: A host application of the kind the ASGI face is for: Starlette with a page of its own and
#: sente_lite's App mounted at /rt (run by uvicorn in a process of its own).
HOST_APP = '''
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from sente_lite import App

rt = App()


@rt.on("app/echo")
async def echo(conn, data):
    return {"echo": data}


@rt.on("app/announce")
async def announce(conn, data):
    await rt.publish("news", {"text": data})
    return "published"


async def home(request):
    return HTMLResponse("<!doctype html><title>host application</title><p>home</p>")


app = Starlette(routes=[Route("/", home), Mount("/rt", rt)], lifespan=rt.lifespan)
'''


def test_page_against_the_app_mounted_in_starlette_under_uvicorn(browser: Any, tmp_path: Path) -> None:
    """The page of a Starlette application, with sente_lite.js served by the App mounted at
    /rt, connects to ws://host/rt/chsk: a request and its reply, then a channel message
    published by a handler."""
    pytest.importorskip("starlette", reason="starlette (the [test] extra) is not installed")
    from support import uvicorn_process

    (tmp_path / "hostapp.py").write_text(HOST_APP)
    with uvicorn_process("hostapp:app", tmp_path) as base:
        ctx = browser.new_context()
        try:
            page = ctx.new_page()
            page.set_default_timeout(PAGE_WAIT_MS)
            page.goto(f"{base}/")
            assert page.title() == "host application"
            page.add_script_tag(url=f"{base}/rt{static.script_url()}")
            page.wait_for_function("!!window.SenteLite")
            page.evaluate("window.WS_URL = %s" % json.dumps(base.replace("http://", "ws://") + "/rt/chsk"))
            assert page.evaluate(CONNECT) is True
            assert page.evaluate("c.request('app/echo', {x: 1})") == {"echo": {"x": 1}}
            page.evaluate("() => { window.got = []; return c.subscribe('news', m => got.push(m)); }")
            assert page.evaluate("c.request('app/announce', 'hello from the host')") == "published"
            page.wait_for_function("got.length === 1")
            msg = page.evaluate("got[0]")
            assert msg["data"] == {"text": "hello from the host"} and msg["offset"] == 1
            assert msg["from"] is None  # published by the server
            assert page.evaluate("c.stats().badFramesFromServer") == 0
        finally:
            ctx.close()
