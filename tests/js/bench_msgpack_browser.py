"""JSON vs MessagePack in sente_lite.js inside headless Chromium: the measurements of
bench_msgpack.mjs (bytes per frame, decode and encode time), run in a page.

Run: ``python tests/js/bench_msgpack_browser.py [--runs 15] [--target-ms 20] [--json]``.
Needs Playwright for Python and Debian's chromium (as tests/browser/test_browser.py). The page
loads the client from a local sente_lite server, then bench_msgpack_core.cjs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's sente_lite, not an installed one

from playwright.sync_api import sync_playwright  # noqa: E402

from sente_lite import Server
from sente_lite.server import static  # noqa: E402
from sente_lite.bench.browser import CHROMIUM_ARGS  # noqa: E402

CHROMIUM = os.environ.get("SENTE_LITE_CHROMIUM", "/usr/bin/chromium")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=20)
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = ap.parse_args()
    srv = Server("127.0.0.1", 0).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{srv.port}/health")
                page.add_script_tag(url=f"http://127.0.0.1:{srv.port}{static.script_url()}")
                page.add_script_tag(content=(HERE / "bench_msgpack_core.cjs").read_text())
                version = browser.version
                result = page.evaluate("o => msgpackBench(SenteLite, o)",
                                       {"runs": args.runs, "targetMs": args.target_ms})
                table = page.evaluate("([r, w]) => msgpackBenchTable(r, w)",
                                      [result, f"Chromium {version}"])
            finally:
                browser.close()
    finally:
        srv.stop()
    if args.json:
        print(json.dumps({"runtime": f"chromium {version}", **result}))
    else:
        print(table)
        print(f"\nper frame: median of {result['runs']} rounds of ~{result['targetMs']} ms per "
              "measurement (fastest round in parentheses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
