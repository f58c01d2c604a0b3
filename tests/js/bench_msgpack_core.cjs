/*
 * JSON vs MessagePack for the frames sente_lite.js receives, in any JavaScript runtime:
 * bytes on the wire, and the time to decode (and encode) one frame. Loaded by
 * bench_msgpack.mjs (Node) and bench_msgpack_browser.py (Chromium, via Playwright).
 *
 * msgpackBench(SenteLite, {runs, targetMs}) -> {frames: [{name, jsonBytes, msgpackBytes,
 * decode: {jsonParse, jsonFromBytes, msgpack}, encode: {json, msgpack}}]}, times in ns per
 * frame: the median of `runs` rounds (each function timed for about `targetMs` ms per
 * round, in turn), and the fastest round as `<name>Min`.
 */
/** The frames measured: [{name, value}], each a channel message as the server sends it. */
function msgpackBenchFrames() {
  "use strict";
  function channelMsg(data) {
    return ["sente-lite/channel-msg", { "channel-id": "room/lobby", data: data, from: "user-4711",
                                        offset: 123456, epoch: "9f2c4e1a7b3d5c60" }];
  }
  // ~100 B of data: a chat line.
  var small = { user: "alice", text: "Deploy finished, all checks green. Ship it!", ts: 1718000000123, seq: 42 };
  // ~2 KB of JSON-like data: a page of records (ints, floats, strings, bools, nested lists).
  var records = [];
  for (var i = 0; i < 16; i++) {
    records.push({ id: 1000 + i, sku: "SKU-" + (48213 + i * 7), name: "Widget model " + String.fromCharCode(65 + i),
                   price: 19.99 + i * 1.25, qty: (i * 37) % 500, active: i % 3 !== 0, tags: ["blue", "metal"] });
  }
  var large = { page: 3, total: 2184, items: records };
  // ~2 KB of mostly non-ASCII text (Cyrillic, CJK, emoji): strings take the TextDecoder path.
  var lines = [];
  for (var j = 0; j < 14; j++) {
    lines.push({ n: j, text: "Привет, мир! 你好，世界。Сборка " + j + " прошла успешно ✅ 🚀" });
  }
  var unicode = { room: "общий", lines: lines };

  return [
    { name: "channel-msg, ~100 B data", value: channelMsg(small) },
    { name: "channel-msg, ~2 KB data", value: channelMsg(large) },
    { name: "channel-msg, ~2 KB non-ASCII", value: channelMsg(unicode) }
  ];
}

function msgpackBench(SenteLite, options) {
  "use strict";
  var opts = options || {};
  var runs = opts.runs || 15;
  var targetMs = opts.targetMs || 20;
  var mp = SenteLite.msgpack;
  var now = typeof performance !== "undefined" ? function () { return performance.now(); } : Date.now;

  var frames = msgpackBenchFrames();
  var enc = new TextEncoder();
  var dec = new TextDecoder();

  function median(xs) {
    var s = xs.slice().sort(function (a, b) { return a - b; });
    return s[Math.floor(s.length / 2)];
  }
  var sink = 0;
  /** Calls of fn in one timed loop of about targetMs (found by doubling; this warms fn up too). */
  function calibrate(fn) {
    var n = 1, t0, t;
    for (;;) {
      t0 = now();
      for (var k = 0; k < n; k++) { sink += fn(); }
      t = now() - t0;
      if (t >= targetMs / 4) { break; }
      n *= 2;
    }
    return Math.max(1, Math.round(n * targetMs / Math.max(t, 1e-3)));
  }
  /**
   * ns per call of each function of `fns` (an object): `runs` rounds, each timing every
   * function once in turn (so load from other processes falls on all of them alike);
   * the median of the rounds, and the fastest.
   */
  function timeAll(fns) {
    var names = Object.keys(fns), counts = {}, per = {};
    names.forEach(function (k) { counts[k] = calibrate(fns[k]); per[k] = []; });
    for (var r = 0; r < runs; r++) {
      names.forEach(function (k) {
        var fn = fns[k], n = counts[k], t0 = now();
        for (var m = 0; m < n; m++) { sink += fn(); }
        per[k].push((now() - t0) * 1e6 / n);
      });
    }
    var out = {};
    names.forEach(function (k) { out[k] = median(per[k]); out[k + "Min"] = Math.min.apply(null, per[k]); });
    return out;
  }

  var out = [];
  frames.forEach(function (f) {
    var text = JSON.stringify(f.value);
    var textBytes = enc.encode(text);
    var packed = mp.encode(f.value);
    var buffer = packed.buffer.slice(packed.byteOffset, packed.byteOffset + packed.byteLength);  // as a socket gives it
    if (JSON.stringify(mp.decode(buffer)) !== text) { throw new Error("round trip differs for " + f.name); }
    out.push({
      name: f.name,
      jsonBytes: textBytes.length,
      msgpackBytes: packed.length,
      decode: timeAll({
        jsonParse: function () { return JSON.parse(text).length; },
        jsonFromBytes: function () { return JSON.parse(dec.decode(textBytes)).length; },
        msgpack: function () { return mp.decode(buffer).length; }
      }),
      encode: timeAll({
        json: function () { return JSON.stringify(f.value).length; },
        msgpack: function () { return mp.encode(f.value).length; }
      })
    });
  });
  return { frames: out, runs: runs, targetMs: targetMs, sink: sink > 0 };
}

/** The results as a Markdown table: median per frame, the fastest round in parentheses. */
function msgpackBenchTable(result, where) {
  "use strict";
  var rows = ["| " + where + " | JSON bytes | msgpack bytes | decode: JSON.parse(text) | JSON.parse(TextDecoder(bytes)) | msgpack | encode: JSON.stringify | msgpack |",
              "|---|---|---|---|---|---|---|---|"];
  function us(times, k) { return (times[k] / 1000).toFixed(2) + " (" + (times[k + "Min"] / 1000).toFixed(2) + ") µs"; }
  result.frames.forEach(function (f) {
    rows.push("| " + f.name + " | " + f.jsonBytes + " | " + f.msgpackBytes + " (" +
              Math.round(100 * (f.msgpackBytes / f.jsonBytes - 1)) + "%) | " + us(f.decode, "jsonParse") + " | " +
              us(f.decode, "jsonFromBytes") + " | " + us(f.decode, "msgpack") + " | " + us(f.encode, "json") + " | " +
              us(f.encode, "msgpack") + " |");
  });
  return rows.join("\n");
}

if (typeof module === "object" && module && module.exports) {
  module.exports = { msgpackBench: msgpackBench, msgpackBenchTable: msgpackBenchTable,
                     msgpackBenchFrames: msgpackBenchFrames };
}
