"""Make docs/img/demo.png: the demo page (``sente-lite serve --demo``) in headless Chromium.

    python docs/img/screenshot.py [--chromium /usr/bin/chromium]

A server with the demo page, a Python client chatting on the page's channels, one
server restart on the same port (the page's connection log shows the reconnect), then
a screenshot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from sente_lite import Client, Server

OUT = Path(__file__).resolve().parent / "demo.png"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LINES = [("ada", "demo/general", "Morning! Deploy of the ingest service is rolling out."),
         ("grace", "demo/general", "Seeing the new build on 3 of 5 nodes so far."),
         ("ada", "demo/builds", "build #812 passed (4m 12s)"),
         ("grace", "demo/general", "All 5 nodes green. Latency p99 back to 18 ms."),
         ("ada", "demo/random", "anyone up for lunch at 12:30?")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    first = Server(demo=True).start()
    port = first.port
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1180, "height": 640}, device_scale_factor=1)
        page.add_init_script("localStorage.setItem('sente-lite-demo-name', 'linus')")
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.demoClient && demoClient.status === 'connected'")
        first.stop()  # a restart on the same port: the page reconnects and re-subscribes
        page.wait_for_function("demoClient.status === 'reconnecting'")
        with Server(port=port, demo=True) as srv:
            page.wait_for_function("demoClient.status === 'connected' && demoClient.subscriptions().length === 3")
            with Client(srv.url) as py:
                assert py.wait_connected(10)
                for name, channel, text in LINES[:2]:
                    py.publish(channel, {"name": name, "text": text, "ts": time.time() * 1000}, ack=True)
                page.fill("#what", "Nice. I'll watch the error rate for the next hour.")
                page.click("#send")
                for name, channel, text in LINES[2:]:
                    py.publish(channel, {"name": name, "text": text, "ts": time.time() * 1000}, ack=True)
                page.wait_for_function("document.querySelectorAll('.msg').length === 4")
                page.wait_for_timeout(2500)  # let the round-trip figure appear and animations settle
                page.screenshot(path=str(OUT))
        browser.close()
    print(OUT)


if __name__ == "__main__":
    main()
