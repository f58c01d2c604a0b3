// JSON vs MessagePack in sente_lite.js under Node: bytes per frame and decode/encode time.
// Run: node tests/js/bench_msgpack.mjs [--runs 15] [--target-ms 20] [--json]
// Chromium: python tests/js/bench_msgpack_browser.py (same measurements, same table).
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const SenteLite = require(join(resolve(here, "..", ".."), "sente_lite", "static", "sente_lite.js"));
const { msgpackBench, msgpackBenchTable } = require(join(here, "bench_msgpack_core.cjs"));

const args = process.argv.slice(2);
const arg = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? Number(args[i + 1]) : dflt; };
const result = msgpackBench(SenteLite, { runs: arg("--runs", 15), targetMs: arg("--target-ms", 20) });
if (args.includes("--json")) {
  console.log(JSON.stringify({ runtime: `node ${process.version}`, ...result }));
} else {
  console.log(msgpackBenchTable(result, `Node ${process.version}`));
  console.log(`\nper frame: median of ${result.runs} rounds of ~${result.targetMs} ms per measurement (fastest round in parentheses)`);
}
