"""Receive rate of one subscriber on one channel: a Chromium page vs the Python client.

    python -m sente_lite.bench.browser [--messages 20000] [--payload-bytes 64] [--runs 3]

A server process publishes ``--messages`` messages on one channel as fast as it can
(``Server.publish`` in a loop); exactly one subscriber receives them, and the rate is
messages / (time of the last delivery - time of the first publish), on the machine's
wall clock (one machine, so the clocks are the same). The subscriber is, in turn, a
page in headless Chromium running ``sente_lite.js`` (a handler that counts, as in an
application that keeps the data; once with JSON, once with ``packer: "msgpack"``) and a
Python process running :class:`sente_lite.Client` with the same kind of handler. Runs
alternate between the receivers; the table shows the median of ``--runs``, and how long
the publishing loop itself took (when it is as long as the delivery, the publisher was
the limit). Another row is the same page with a bare ``WebSocket`` that only counts the
frames: what the browser itself can take, without the client.

The server's slow-consumer limit is raised for the run (every message may wait in
its queue); rate limiting does not apply to server publishes. Needs Playwright for
Python (``pip install 'sente-lite[test]'``) and Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
from typing import Any, Dict, List, Optional

from ..core import static
from .receive import (CHANNEL, RUN_TIMEOUT_S, client_receiver, process_run, row, start_server,
                      stop_server)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# Each page script leaves ``doneAt`` (ms, wall clock) once ``count`` messages arrived,
# ``inOrder()`` and ``stop()``.
PAGE_SUBSCRIBE = """async ([url, count, packer]) => {
  const got = []; window.doneAt = null;
  const c = new SenteLite.Client(url, { packer });
  await c.waitConnected(10000);
  await c.subscribe(%r, (m) => { got.push(m.data); if (got.length === count) { doneAt = Date.now(); } });
  window.inOrder = () => got.every((d, i) => d.i === i);
  window.stop = () => c.close();
  return true;
}""" % CHANNEL

#: The same page with a bare WebSocket that only counts the channel frames: the browser's own cost.
PAGE_RAW = """async ([url, count]) => {
  let n = 0; window.doneAt = null;
  const ws = new WebSocket(url + "?client-id=raw-" + Math.random());
  await new Promise((subscribed) => {
    ws.onmessage = (ev) => {
      if (ev.data.startsWith('["sente-lite/channel-msg"')) {
        if (++n === count) { doneAt = Date.now(); }
      } else if (ev.data.startsWith('["chsk/handshake"')) {
        ws.send(JSON.stringify(["sente-lite/subscribe", {"channel-id": %r}, "c1"]));
      } else if (ev.data.startsWith('["chsk/reply"')) {
        subscribed();
      }
    };
  });
  window.inOrder = () => true;  // not checked: this page only counts
  window.stop = () => ws.close();
  return true;
}""" % CHANNEL


def run(messages: int, payload_bytes: int, runs: int, chromium: str) -> List[Dict[str, Any]]:
    """Alternate page and Python runs; one row per receiver with medians."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("playwright is not installed: pip install 'sente-lite[test]' "
                         "(and Debian's chromium)") from None
    ctx = multiprocessing.get_context("spawn")
    server, spipe, url = start_server(ctx)
    pad = "x" * payload_bytes
    results: Dict[str, List[Dict[str, float]]] = {"chromium page (sente_lite.js)": [],
                                                  "chromium page (sente_lite.js, msgpack)": [],
                                                  "chromium page (bare WebSocket, counting)": [],
                                                  "python process (sente_lite.Client)": []}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                for _ in range(runs):
                    results["chromium page (sente_lite.js)"].append(
                        _page_run(browser, url, spipe, messages, pad, PAGE_SUBSCRIBE))
                    results["chromium page (sente_lite.js, msgpack)"].append(
                        _page_run(browser, url, spipe, messages, pad, PAGE_SUBSCRIBE, "msgpack"))
                    results["chromium page (bare WebSocket, counting)"].append(
                        _page_run(browser, url, spipe, messages, pad, PAGE_RAW))
                    results["python process (sente_lite.Client)"].append(
                        process_run(ctx, client_receiver, url, spipe, messages, pad))
            finally:
                browser.close()
    finally:
        stop_server(server, spipe)
    rows = []
    for name, rs in results.items():
        rows.append({"receiver": name, "messages": messages,
                     "msgs/s": statistics.median(r["rate"] for r in rs),
                     "publish loop s": statistics.median(r["publish_s"] for r in rs),
                     "delivery s": statistics.median(r["delivery_s"] for r in rs),
                     "in order, none lost": all(r["ok"] for r in rs)})
    return rows


def _page_run(browser: Any, url: str, spipe: Any, messages: int, pad: str, script: str,
              packer: str = "json") -> Dict[str, float]:
    page = browser.new_page()
    try:
        origin = url.replace("ws://", "http://").rsplit("/", 1)[0]
        page.goto(origin + "/health")
        page.add_script_tag(url=origin + static.script_url())
        page.evaluate(script, [url, messages, packer])
        spipe.send(("publish", messages, pad))
        t0, t1 = spipe.recv()
        page.wait_for_function("window.doneAt !== null", timeout=RUN_TIMEOUT_S * 1000, polling=50)
        done_at, ordered = page.evaluate("[doneAt, inOrder()]")
        page.evaluate("stop()")
    finally:
        page.close()
    return row(t0, t1, done_at / 1000.0, messages, bool(ordered))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sente_lite.bench.browser", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000, help="messages per run")
    ap.add_argument("--payload-bytes", type=int, default=64, help="size of each message's padding")
    ap.add_argument("--runs", type=int, default=3, help="runs per receiver (median reported)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = ap.parse_args(argv)
    rows = run(args.messages, args.payload_bytes, args.runs, args.chromium)
    from tabulate import tabulate
    print(tabulate([[r["receiver"], r["messages"], f"{r['msgs/s']:,.0f}", f"{r['publish loop s']:.2f}",
                     f"{r['delivery s']:.2f}", r["in order, none lost"]] for r in rows],
                   headers=["receiver", "messages", "msgs/s", "publish loop s", "delivery s", "in order, none lost"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
