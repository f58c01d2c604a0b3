// The MessagePack codec inside sente_lite.js (SenteLite.msgpack), without a server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SenteLite } from "./helpers.mjs";

const { encode, decode, MAX_DEPTH } = SenteLite.msgpack;
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (h) => new Uint8Array(Buffer.from(h.replace(/\s+/g, ""), "hex"));

/** Encode `value`, check the bytes start with `head` (hex) and decode back to `value`. */
function roundTrip(value, head, length) {
  const bytes = encode(value);
  assert.ok(bytes instanceof Uint8Array);
  assert.equal(hex(bytes).slice(0, head.length), head, `head of ${JSON.stringify(value).slice(0, 40)}`);
  if (length !== undefined) { assert.equal(bytes.length, length); }
  assert.deepEqual(decode(bytes), value);
  return bytes;
}

test("nil, booleans", () => {
  roundTrip(null, "c0", 1);
  roundTrip(false, "c2", 1);
  roundTrip(true, "c3", 1);
});

test("integers: the smallest int or uint form at every boundary, up to 2^53 - 1", () => {
  const cases = [
    [0, "00"], [127, "7f"], [128, "cc80"], [255, "ccff"], [256, "cd0100"], [65535, "cdffff"],
    [65536, "ce00010000"], [2 ** 32 - 1, "ceffffffff"], [2 ** 32, "cf0000000100000000"],
    [2 ** 53 - 1, "cf001fffffffffffff"],
    [-1, "ff"], [-32, "e0"], [-33, "d0df"], [-128, "d080"], [-129, "d1ff7f"], [-32768, "d18000"],
    [-32769, "d2ffff7fff"], [-(2 ** 31), "d280000000"], [-(2 ** 31) - 1, "d3ffffffff7fffffff"],
    [-(2 ** 53 - 1), "d3ffe0000000000001"],
  ];
  for (const [n, h] of cases) { assert.equal(hex(roundTrip(n, h)), h, String(n)); }
  assert.equal(hex(encode(-0)), "00");
});

test("integers read in every width, also non-shortest forms", () => {
  const cases = [
    ["cc05", 5], ["cd0005", 5], ["ce00000005", 5], ["cf0000000000000005", 5],
    ["d0fb", -5], ["d1fffb", -5], ["d2fffffffb", -5], ["d3fffffffffffffffb", -5], ["d005", 5],
    ["d37fffffffffffffff", 2 ** 63], ["d38000000000000000", -(2 ** 63)],
  ];
  for (const [h, n] of cases) { assert.equal(decode(unhex(h)), n, h); }
});

test("uint64/int64 beyond 2^53 decode to the nearest Number (precision lost, as JSON.parse)", () => {
  assert.equal(decode(unhex("cfffffffffffffffff")), 18446744073709551615);
  assert.equal(decode(unhex("cf0020000000000001")), 2 ** 53);  // 2^53 + 1 is not a Number
  assert.equal(decode(unhex("cf0020000000000001")), JSON.parse("9007199254740993"));
  assert.equal(decode(unhex("d3ffdfffffffffffff")), -(2 ** 53));
});

test("floats: float64 written, float32 read; non-integers and big integers are float64; NaN/Infinity are nil", () => {
  assert.equal(hex(roundTrip(1.5, "cb", 9)), "cb3ff8000000000000");
  roundTrip(-0.1, "cb", 9);
  roundTrip(1e300, "cb", 9);
  roundTrip(5e-324, "cb", 9);
  roundTrip(2 ** 53, "cb", 9);
  roundTrip(-(2 ** 60), "cb", 9);
  assert.equal(decode(unhex("ca3fc00000")), 1.5);
  assert.equal(decode(unhex("cabf800000")), -1);
  assert.ok(Math.abs(decode(unhex("ca3dcccccd")) - 0.1) < 1e-8);
  for (const v of [NaN, Infinity, -Infinity]) { assert.equal(hex(encode(v)), "c0"); }
  assert.deepEqual(decode(encode([NaN, 1])), JSON.parse(JSON.stringify([NaN, 1])));
});

test("strings: fixstr/str8/str16/str32 boundaries counted in UTF-8 bytes", () => {
  const cases = [[0, "a0"], [31, "bf"], [32, "d920"], [255, "d9ff"], [256, "da0100"],
                 [65535, "daffff"], [65536, "db00010000"], [70000, "db00011170"]];
  for (const [n, h] of cases) { roundTrip("x".repeat(n), h, n + h.length / 2); }
  // 2-byte characters: 15 x "é" is 30 bytes (fixstr), 16 is 32 (str8); the header is the real length's
  roundTrip("é".repeat(15), "be", 31);
  roundTrip("é".repeat(16), "d920", 34);
  roundTrip("€".repeat(85), "d9ff", 257);        // 255 bytes
  roundTrip("€".repeat(86), "da0102", 261);      // 258 bytes
  roundTrip("é".repeat(32768), "db00010000", 65541);
  roundTrip("a".repeat(40) + "é", "d92a");
  roundTrip("a".repeat(240) + "é", "d9f2");       // long enough for TextEncoder.encodeInto
  roundTrip("é".repeat(300), "da0258");
});

test("unicode: BMP, astral plane (surrogate pairs), lone surrogates become U+FFFD", () => {
  assert.equal(hex(roundTrip("😀", "a4")), "a4f09f9880");
  for (const s of ["é", "日本語", "a😀b", "𝄞".repeat(20), "mixed ascii ✓ 😀 and more ".repeat(10), "\u0000\u007f\u0080\u07ff\u0800\uffff"]) {
    const bytes = roundTrip(s, "");
    assert.equal(hex(bytes).slice(-Buffer.byteLength(s) * 2), Buffer.from(s, "utf8").toString("hex"));
  }
  assert.equal(hex(encode("\ud800")), "a3efbfbd");
  assert.equal(decode(encode("a\udc00b")), "a\ufffdb");
  assert.equal(decode(encode("x".repeat(40) + "\ud83d")), "x".repeat(40) + "\ufffd");
  assert.equal(decode(encode("x".repeat(240) + "\ud83d")), "x".repeat(240) + "\ufffd");
});

test("arrays and maps: fix/16/32 boundaries", () => {
  const arr = (n) => Array.from({ length: n }, (_, i) => i % 100);
  const map = (n) => Object.fromEntries(Array.from({ length: n }, (_, i) => ["k" + i, i]));
  roundTrip([], "90", 1);
  roundTrip(arr(15), "9f");
  roundTrip(arr(16), "dc0010");
  roundTrip(arr(65535), "dcffff");
  roundTrip(arr(65536), "dd00010000");
  roundTrip({}, "80", 1);
  roundTrip(map(15), "8f");
  roundTrip(map(16), "de0010");
  roundTrip(map(65536), "df00010000");
  roundTrip({ a: [1, { b: [null, true, "c"] }], "": 0, "ключ": "значение", "😀": [] }, "84");
  assert.deepEqual(decode(unhex("dd00000002 01 02")), [1, 2]);         // array32, short
  assert.deepEqual(decode(unhex("df00000001 a161 01")), { a: 1 });     // map32, short
  assert.deepEqual(decode(unhex("81 db00000001 61 c3")), { a: true }); // str32 key
  assert.deepEqual(decode(unhex("82 a161 01 a161 02")), { a: 2 });      // a repeated key: the last wins, as JSON.parse
});

test("writes what JSON.stringify writes: toJSON, undefined, functions, boxed values", () => {
  const when = new Date(0);
  const value = { when, gone: undefined, fn() {}, list: [undefined, () => 1, Symbol("s")],
                  boxed: [new Number(1), new String("s"), new Boolean(false)], nested: { toJSON: () => "x" } };
  assert.deepEqual(decode(encode(value)), JSON.parse(JSON.stringify(value)));
  assert.throws(() => encode({ big: 1n }), TypeError);
});

test("a __proto__ key is an own property, never the prototype", () => {
  const v = decode(unhex("81 a95f5f70726f746f5f5f 81 a161 01"));  // {"__proto__": {"a": 1}}
  assert.equal(Object.getPrototypeOf(v), Object.prototype);
  assert.deepEqual(Object.keys(v), ["__proto__"]);
  assert.equal(v.a, undefined);
  assert.deepEqual(JSON.stringify(v), '{"__proto__":{"a":1}}');
  assert.deepEqual(decode(encode(v)), v);
});

test("input: ArrayBuffer, Uint8Array at an offset, Node Buffer; anything else refused", () => {
  const bytes = encode(["ev/x", { a: 1 }]);
  const padded = new Uint8Array(bytes.length + 7);
  padded.set(bytes, 3);
  for (const input of [bytes.buffer.slice(0), bytes, padded.subarray(3, 3 + bytes.length), Buffer.from(bytes),
                       new DataView(padded.buffer, 3, bytes.length)]) {
    assert.deepEqual(decode(input), ["ev/x", { a: 1 }]);
  }
  for (const bad of ["\x91\xc0", null, undefined, [0x91, 0xc0], 7]) {
    assert.throws(() => decode(bad), { name: "SenteLiteError", code: "bad-frame" });
  }
});

test("depth: MAX_DEPTH (100) nested arrays and maps pass, one more is refused both ways", () => {
  assert.equal(MAX_DEPTH, 100);
  const nest = (n, leaf) => { let v = leaf; for (let i = 0; i < n; i++) { v = i % 2 ? { k: v } : [v]; } return v; };
  assert.deepEqual(decode(encode(nest(100, 1))), nest(100, 1));
  assert.deepEqual(decode(encode(nest(99, []))), nest(99, []));
  assert.throws(() => encode(nest(101, 1)), { name: "TypeError", message: /deeper than 100/ });
  assert.throws(() => encode(nest(100, [])), TypeError);
  assert.throws(() => decode(unhex("91".repeat(101) + "c0")), { code: "bad-frame", message: /deeper than 100/ });
  assert.throws(() => decode(unhex("81a161".repeat(101) + "c0")), { code: "bad-frame", message: /deeper than 100/ });
  let arrays = null;
  for (let i = 0; i < 100; i++) { arrays = [arrays]; }
  assert.deepEqual(decode(unhex("91".repeat(100) + "c0")), arrays);
  assert.doesNotThrow(() => decode(unhex("91".repeat(102) + "c0"), 102));
  const cycle = { a: [] };
  cycle.a.push(cycle);
  assert.throws(() => encode(cycle), { name: "TypeError", message: /circular/ });
});

test("bin is read as a Uint8Array (a copy), in each of its three sizes; ext types are refused", () => {
  const bins = [["c40100", [0]], ["c5000100", [0]], ["c600000001 07", [7]], ["c400", []]];
  for (const [h, want] of bins) {
    const input = unhex(h);
    const got = decode(input);
    assert.ok(got instanceof Uint8Array && !(got instanceof Buffer), h);
    assert.deepEqual(Array.from(got), want, h);
    if (got.length) { input[input.length - 1] ^= 1; assert.equal(got[0], want[0], "a copy, not a view"); }
    assert.deepEqual(Array.from(decode(unhex("92 a465762f78" + h))[1]), want, h);  // ["ev/x", <bin>]
  }
  assert.throws(() => decode(unhex("c50002 00")), { code: "bad-frame", message: /truncated/ });
  const exts = ["c70101 00", "c8000101 00", "c900000001 01 00", "d401 00", "d501 0000", "d601 00000000",
                "d701 0000000000000000", "d801 00000000000000000000000000000000"];
  for (const h of exts) { assert.throws(() => decode(unhex(h)), { code: "bad-frame", message: /ext type/ }, h); }
  assert.throws(() => decode(unhex("c1")), /never used/);
});

test("a Uint8Array or a Node Buffer is written as bin in its shortest form, at each size boundary", () => {
  for (const [n, head] of [[0, "c400"], [255, "c4ff"], [256, "c50100"], [65535, "c5ffff"], [65536, "c600010000"]]) {
    const bytes = new Uint8Array(n).map((_, i) => i % 251);
    const out = encode(bytes);
    assert.equal(hex(out).slice(0, head.length), head, String(n));
    assert.equal(out.length, head.length / 2 + n);
    assert.deepEqual(decode(out), bytes);
  }
  assert.equal(hex(encode(Buffer.from("hi"))), "c4026869");  // not Buffer.toJSON's {type, data}
  assert.deepEqual(decode(encode({ a: [new Uint8Array([1])] })), { a: [new Uint8Array([1])] });
});

test("a map whose only key is $bytes is refused: it is the tagged form of bytes", () => {
  assert.throws(() => encode({ $bytes: "AA==" }), { name: "TypeError", message: /\$bytes/ });
  assert.throws(() => encode([{ x: { $bytes: 1 } }]), /tagged form/);
  assert.throws(() => encode({ $bytes: "AA==", gone: undefined }), /tagged form/);  // written as one key
  assert.doesNotThrow(() => encode({ $bytes: "AA==", other: 1 }));
});

test("non-string map keys, invalid UTF-8, trailing bytes are refused", () => {
  for (const h of ["81 01 02", "81 c0 02", "81 90 02", "81 cb3ff8000000000000 01", "81 c40161 01"]) {
    assert.throws(() => decode(unhex(h)), { code: "bad-frame", message: /not a string/ }, h);
  }
  for (const h of ["a2 c328", "a1 ff", "a3 eda080", "d920 " + "ff".repeat(32)]) {
    assert.throws(() => decode(unhex(h)), { code: "bad-frame", message: /UTF-8/ }, h);
  }
  assert.throws(() => decode(unhex("c0 c0")), { code: "bad-frame", message: /1 bytes after the value/ });
  assert.throws(() => decode(new Uint8Array(0)), { code: "bad-frame", message: /truncated/ });
});

test("truncated input: every proper prefix of a frame is refused", () => {
  const frame = encode(["sente-lite/channel-msg", { "channel-id": "c", data: { n: 1.5, big: 2 ** 40, neg: -70000,
    s: "é😀".repeat(20), l: Array.from({ length: 20 }, (_, i) => i * 1000) }, offset: 7, epoch: "e" }, "cb-1"]);
  for (let n = 0; n < frame.length; n++) {
    assert.throws(() => decode(frame.subarray(0, n)), { code: "bad-frame", message: /truncated/ }, `prefix ${n}`);
  }
  // lengths far beyond the input are refused before anything is allocated
  for (const h of ["ddffffffff", "dfffffffff", "dbffffffff", "daffff 61", "dc0003 01"]) {
    assert.throws(() => decode(unhex(h)), { code: "bad-frame", message: /truncated/ }, h);
  }
});

test("random JSON-like values round-trip and match JSON's view of them", () => {
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const strs = ["", "a", "é", "😀", "x".repeat(40), "日本", "k\u0000z", "ключ"];
  function gen(depth) {
    const kind = Math.floor(rnd() * (depth > 4 ? 6 : 8));
    switch (kind) {
      case 0: return null;
      case 1: return rnd() < 0.5;
      case 2: return Math.floor((rnd() - 0.5) * 2 ** Math.floor(rnd() * 54));
      case 3: return (rnd() - 0.5) * 10 ** Math.floor(rnd() * 20 - 10);
      case 4: return pick(strs) + pick(strs);
      case 5: return pick(strs).repeat(Math.floor(rnd() * 100));
      case 6: return Array.from({ length: Math.floor(rnd() * 20) }, () => gen(depth + 1));
      default: return Object.fromEntries(Array.from({ length: Math.floor(rnd() * 20) }, (_, i) => [pick(strs) + i, gen(depth + 1)]));
    }
  }
  for (let i = 0; i < 300; i++) {
    const v = gen(0);
    const back = decode(encode(v));
    assert.deepEqual(back, v);
    assert.deepEqual(back, JSON.parse(JSON.stringify(v)));
  }
});

test("encode buffers are independent: a later encode does not change an earlier result", () => {
  const a = encode(["ev/a", "x".repeat(100)]);
  const copy = hex(a);
  encode(["ev/b", "y".repeat(5000)]);
  assert.equal(hex(a), copy);
  const inner = { toJSON: () => hex(encode(["ev/inner", 1])) };  // encoding inside an encode
  assert.deepEqual(decode(encode([inner, "after"])), [hex(encode(["ev/inner", 1])), "after"]);
});

test("map keys: the key cache never mixes keys up (same slot, one byte apart, 15 vs 16 bytes)", () => {
  const big = Object.fromEntries(Array.from({ length: 10000 }, (_, i) => ["k" + i, i]));
  for (let round = 0; round < 2; round++) { assert.deepEqual(decode(encode(big)), big); }
  const v = { Aa: 1, BB: 2, abcdefghijklmno: 3, abcdefghijklmnp: 4, abcdefghijklmnop: 5, "é": 6, "": 7 };
  for (let round = 0; round < 3; round++) {
    assert.deepEqual(decode(encode(v)), v);  // "Aa" and "BB" share a cache slot
    assert.deepEqual(decode(encode([{ BB: 1 }, { Aa: 2 }, { BB: 3 }])), [{ BB: 1 }, { Aa: 2 }, { BB: 3 }]);
  }
});
