// JSON vs MessagePack in sente_lite.js under Node: bytes per frame and decode/encode time.
// Run: node tests/js/bench_msgpack.mjs [--runs 15] [--target-ms 20] [--json]
// Chromium: python tests/js/bench_msgpack_browser.py (same measurements, same table).
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const SenteLite = require(join(resolve(here, "..", ".."), "sente_lite", "static", "sente_lite.js"));
import { deflateRawSync } from "node:zlib";
const { msgpackBench, msgpackBenchTable, msgpackBenchFrames } = require(join(here, "bench_msgpack_core.cjs"));

const args = process.argv.slice(2);
const arg = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? Number(args[i + 1]) : dflt; };
const result = msgpackBench(SenteLite, { runs: arg("--runs", 15), targetMs: arg("--target-ms", 20) });
if (args.includes("--json")) {
  console.log(JSON.stringify({ runtime: `node ${process.version}`, ...result }));
} else {
  console.log(msgpackBenchTable(result, `Node ${process.version}`));
  // permessage-deflate (Server(compression="deflate")) compresses each message on its own
  console.log("\n| with permessage-deflate | JSON bytes | msgpack bytes |\n|---|---|---|");
  for (const f of msgpackBenchFrames()) {
    const json = deflateRawSync(Buffer.from(JSON.stringify(f.value))).length;
    const packed = deflateRawSync(SenteLite.msgpack.encode(f.value)).length;
    console.log(`| ${f.name} | ${json} | ${packed} (${Math.round(100 * (packed / json - 1))}%) |`);
  }
  console.log(`\nper frame: median of ${result.runs} rounds of ~${result.targetMs} ms per measurement (fastest round in parentheses)`);
}
