/*
 * sente_lite.js: the browser (and Node) client of sente_lite, wire protocol version 1.
 *
 * No build step, no dependencies. One source, three ways to load it:
 *   <script src="/sente_lite.js"></script>      classic script: defines window.SenteLite
 *   import { Client } from "/sente_lite.mjs";   ES module (the server serves this file with
 *                                               its last line replaced by `export`s)
 *   const { Client } = require("sente_lite.js") Node (CommonJS); pass `WebSocket` from the
 *                                               npm `ws` package: Node 20 has no global one
 *
 * The API mirrors the Python client (sente_lite.Client) in JavaScript naming. Reference:
 * docs/browser.md. Wire contract: docs/protocol.md.
 *
 * Everything runs on the page's event loop: handlers of one client run one at a time, in
 * arrival order (a handler returning a Promise does not hold back the next event).
 */
var SenteLite = (function () {
  "use strict";

  var VERSION = "0.1.0";
  var PROTOCOL_VERSION = 1;

  var CONNECTING = "connecting";
  var CONNECTED = "connected";
  var RECONNECTING = "reconnecting";
  var CLOSED = "closed";

  var EV_HANDSHAKE = "chsk/handshake";
  var EV_PING = "chsk/ws-ping";
  var EV_PONG = "chsk/ws-pong";
  var EV_REPLY = "chsk/reply";
  var EV_ERROR = "chsk/error";
  var EV_SUBSCRIBE = "sente-lite/subscribe";
  var EV_SUBSCRIBED = "sente-lite/subscribed";
  var EV_UNSUBSCRIBE = "sente-lite/unsubscribe";
  var EV_UNSUBSCRIBED = "sente-lite/unsubscribed";
  var EV_PUBLISH = "sente-lite/publish";
  var EV_CHANNEL_MSG = "sente-lite/channel-msg";
  var EV_BATCH = "chsk/batch";
  // Presence and join/leave (feature "presence", protocol section 15).
  var EV_PRESENCE = "sente-lite/presence";
  var EV_PRESENCE_STATS = "sente-lite/presence-stats";
  var EV_JOIN = "sente-lite/join";
  var EV_LEAVE = "sente-lite/leave";
  // History reads (feature "history-api") and server-side subscriptions (feature "server-subs").
  var EV_HISTORY = "sente-lite/history";
  var EV_SERVER_SUB = "sente-lite/server-sub";
  var EV_SERVER_UNSUB = "sente-lite/server-unsub";
  /** A fresh connection token over the open socket (feature "refresh", protocol section 12). */
  var EV_REFRESH = "chsk/refresh";
  var FEATURE_REFRESH = "refresh";
  /** A fresh subscription token for one channel (feature "sub-token", protocol section 16). */
  var EV_SUB_REFRESH = "sente-lite/sub-refresh";
  var FEATURE_SUB_TOKEN = "sub-token";
  /** A sub-refresh answered with one of these is not tried again; these and invalid-token tell onTokenRefused. */
  var SUB_FINAL_REFUSALS = ["forbidden", "not-subscribed"];
  var SUB_TOLD_REFUSALS = SUB_FINAL_REFUSALS.concat(["invalid-token"]);
  /** The subprotocol offered with "bearer.<token>" to carry a token outside the URL. */
  var SUBPROTOCOL = "sente-lite";
  /** Characters a subprotocol name may hold (RFC 6455: an HTTP token); a JWT is made of them. */
  var SUBPROTOCOL_TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  /** Refresh when this share of the token's life is left, at most REFRESH_MAX_AHEAD_MS before exp. */
  var REFRESH_AHEAD_FRACTION = 0.25;
  var REFRESH_MAX_AHEAD_MS = 300000;
  /** A failed refresh is tried again this much later while the token lasts. */
  var REFRESH_RETRY_MS = 1000;
  var REFRESH_TIMEOUT_MS = 5000;
  /** Longest token whose claims are read. */
  var MAX_TOKEN_CHARS = 8192;

  var CLOSE_NORMAL = 1000;
  var CLOSE_POLICY = 1008;

  /** Defaults of every option (milliseconds where the name says Ms). */
  var DEFAULTS = {
    backoffBaseMs: 250,        // reconnect delay = random(0, min(backoffMaxMs, backoffBaseMs * 2^n))
    backoffMaxMs: 10000,
    maxPendingSends: 1000,     // frames queued while disconnected; one more throws SendQueueFull
    requestTimeoutMs: 5000,    // request(), subscribe(), publish({ack}) without their own timeoutMs
    connectTimeoutMs: 10000,   // one attempt: socket open + handshake, else it is dropped and retried
    autoReconnect: true,
    packer: "json",            // "msgpack": MessagePack in binary frames (protocol section 10)
    batch: false,              // ask the server for chsk/batch frames when this connection is backed up
    maxUnackedPublishes: 1000, // publishes awaiting their ack (the outbox); one more throws SendQueueFull
    publishBlockMs: 5000,      // publish({ack}) with a full outbox waits this long for room (0: rejects at once)
    persistPositions: false,   // true (sessionStorage) or a Storage: keep channel positions across page reloads
    tokenVia: "subprotocol"    // "subprotocol": Sec-WebSocket-Protocol "sente-lite, bearer.<token>"; "query": ?token=
  };
  /** The error code of a publish whose outcome the server could not know: resent, same id. */
  var ERR_OUTCOME_UNKNOWN = "outcome-unknown";
  /** Delay before the positions of channels are written to persistPositions' storage. */
  var PERSIST_DELAY_MS = 50;
  var PACKERS = ["json", "msgpack"];
  /** A server silent for 2 x heartbeat-ms + this is dead (protocol section 5). */
  var DEAD_SERVER_SLACK_MS = 1000;
  /** HTTP answers to a refused upgrade that end reconnecting (others are retried). */
  var FINAL_REFUSALS = [400, 401, 403, 404];
  /** Longest refusal text kept from a probe answer. */
  var MAX_REFUSAL_TEXT = 500;

  var EVENT_ID_RE = /^[A-Za-z0-9_.\-]{1,64}\/[A-Za-z0-9_.\-]{1,64}$/;
  var CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
  var MAX_CHANNEL_ID_CHARS = 256;
  var MAX_CB_ID_CHARS = 64;

  // -- errors ---------------------------------------------------------------------------
  function defineError(name, parent, defaultCode) {
    var E = function (message, code) {
      var err = new Error(message);
      Object.setPrototypeOf(err, E.prototype);
      err.name = name;
      err.code = code || defaultCode;
      if (Error.captureStackTrace) { Error.captureStackTrace(err, E); }
      return err;
    };
    E.prototype = Object.create(parent.prototype, {
      constructor: { value: E, writable: true, configurable: true }
    });
    E.prototype.name = name;
    return E;
  }
  /** Base of every error; `.code` is a protocol error code or a local one. */
  var SenteLiteError = defineError("SenteLiteError", Error, "error");
  /** The peer answered with chsk/error; `.code` is the protocol's code. */
  var RemoteError = defineError("RemoteError", SenteLiteError, "unknown");
  /** No reply within the timeout (code "timeout"). */
  var RequestTimeout = defineError("RequestTimeout", SenteLiteError, "timeout");
  /** The connection died with the request on the wire (code "disconnected"). */
  var Disconnected = defineError("Disconnected", SenteLiteError, "disconnected");
  /** The client was closed (code "closed"). */
  var ClientClosed = defineError("ClientClosed", SenteLiteError, "closed");
  /** The send queue is full while disconnected (code "limit-exceeded", as in Python). */
  var SendQueueFull = defineError("SendQueueFull", SenteLiteError, "limit-exceeded");
  /** The server refused for good (HTTP 400/401/403/404, or close 1008); `.status`, `.closeCode`. */
  var ConnectRefused = defineError("ConnectRefused", SenteLiteError, "refused");

  // -- helpers ----------------------------------------------------------------------------
  function now() { return Date.now(); }

  function isReserved(eventId) {
    return eventId.indexOf("chsk/") === 0 || eventId.indexOf("sente-lite/") === 0;
  }

  function checkEventId(eventId) {
    if (typeof eventId !== "string" || !EVENT_ID_RE.test(eventId)) {
      throw new TypeError("invalid event-id " + JSON.stringify(eventId) +
                          ": need \"namespace/name\" of [A-Za-z0-9_.-], 1-64 chars each");
    }
  }

  /** A presence member in this client's names. */
  function memberOf(m) {
    return { clientId: m["client-id"] === undefined ? null : m["client-id"],
             uid: m.uid === undefined ? null : m.uid, connId: m["conn-id"],
             info: m.info === undefined ? null : m.info };
  }

  function checkMoveHandlers(opts) {
    ["onJoin", "onLeave"].forEach(function (k) {
      if (opts && opts[k] !== undefined && opts[k] !== null && typeof opts[k] !== "function") {
        throw new TypeError(k + " must be a function");
      }
    });
  }

  function checkSubToken(opts) {
    var token = opts ? opts.token : undefined;
    if (token !== undefined && token !== null && typeof token !== "function" && !(typeof token === "string" && token)) {
      throw new TypeError("token must be a subscription token (a non-empty string) or a function returning one");
    }
    if (opts && opts.onTokenRefused !== undefined && opts.onTokenRefused !== null && typeof opts.onTokenRefused !== "function") {
      throw new TypeError("onTokenRefused must be a function");
    }
  }

  function addMoveHandlers(sub, opts) {
    if (!sub.onJoin) { sub.onJoin = []; sub.onLeave = []; }
    if (opts && opts.onJoin) { sub.onJoin.push(opts.onJoin); }
    if (opts && opts.onLeave) { sub.onLeave.push(opts.onLeave); }
  }

  function checkChannelId(channelId) {
    if (typeof channelId !== "string" || channelId.length < 1 ||
        channelId.length > MAX_CHANNEL_ID_CHARS || CONTROL_RE.test(channelId)) {
      throw new TypeError("invalid channel-id " + JSON.stringify(channelId) +
                          ": need 1-" + MAX_CHANNEL_ID_CHARS + " chars, no control characters");
    }
  }

  /**
   * One frame [eventId, data, cbId?] as JSON text, or (binary: packer "msgpack") as the
   * MessagePack bytes of the same array. A Uint8Array (a Node Buffer too) is bytes: JSON's
   * tagged form {"$bytes": base64}, MessagePack's bin (protocol section 10). TypeError when
   * data cannot be written, or holds an object whose only key is "$bytes".
   */
  function encode(eventId, data, cbId, binary) {
    var frame = cbId === undefined ? [eventId, data === undefined ? null : data]
                                   : [eventId, data === undefined ? null : data, cbId];
    if (binary) {
      try {
        return mpEncode(frame);
      } catch (e) {
        throw new TypeError("data of " + eventId + " is not MessagePack-encodable: " + e.message);
      }
    }
    var text;
    try {
      text = JSON.stringify(frame);
      // Only text that may hold bytes (or the tag) is written again, bytes tagged.
      if (MAY_HOLD_BYTES_RE.test(text)) { text = JSON.stringify(frame, tagReplacer); }
    } catch (e) {
      throw new TypeError("data of " + eventId + " is not JSON-encodable: " + e.message);
    }
    return text;
  }

  // -- bytes (protocol section 10) -------------------------------------------------------------
  // In JSON, bytes are an object whose only key is "$bytes", holding standard base64 (with
  // padding); read back as a Uint8Array where the handshake said "bytes": true. In MessagePack
  // they are bin. An object of that shape made by the application is refused when written.
  var BYTES_TAG = "$bytes";
  /** What JSON.stringify makes of a Uint8Array ({"0":..} or {}), of a Node Buffer, or the tag. */
  var MAY_HOLD_BYTES_RE = /\{"0":|\{\}|"type":"Buffer"|"\$bytes"/;
  /** Received text that may hold a tagged form: the key as it is, or written with \u escapes. */
  var MAY_HOLD_TAG_RE = /"\$bytes"|\\u/;
  var BASE64_RE = /^[A-Za-z0-9+\/]*={0,2}$/;
  var hasOwn = Object.prototype.hasOwnProperty;
  var NodeBuffer = typeof Buffer === "function" && typeof Buffer.from === "function" ? Buffer : null;

  function tagShapeError() {
    return new TypeError("an object whose only key is \"$bytes\" is the tagged form of bytes " +
                         "(protocol section 10): give it a second key, or send a Uint8Array");
  }

  /** True when JSON would write only the key "$bytes" of object o. */
  function isTagShaped(o) {
    if (!hasOwn.call(o, BYTES_TAG)) { return false; }
    var keys = Object.keys(o), n = 0;
    for (var i = 0; i < keys.length; i++) {
      var t = typeof o[keys[i]];
      if (t !== "undefined" && t !== "function" && t !== "symbol" && ++n > 1) { return false; }
    }
    return n === 1;
  }

  /** JSON.stringify's replacer: a Uint8Array (before its toJSON) as the tagged form. */
  function tagReplacer(key, value) {
    var raw = this[key];
    if (raw instanceof Uint8Array) {
      var tag = {};
      tag[BYTES_TAG] = toBase64(raw);
      return tag;
    }
    if (value !== null && typeof value === "object" && !Array.isArray(value) && isTagShaped(value)) {
      throw tagShapeError();
    }
    return value;
  }

  function toBase64(bytes) {
    if (typeof bytes.toBase64 === "function") { return bytes.toBase64(); }
    if (NodeBuffer) { return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64"); }
    var parts = [];
    for (var i = 0; i < bytes.length; i += 0x8000) {
      parts.push(String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000)));
    }
    return btoa(parts.join(""));
  }

  /** The bytes of a tagged form's value; a SenteLiteError (bad-frame) unless standard base64. */
  function fromBase64(text) {
    if (typeof text !== "string" || text.length % 4 !== 0 || !BASE64_RE.test(text)) {
      throw new SenteLiteError("\"$bytes\" must hold standard base64 (A-Z a-z 0-9 + /, padded with =)", "bad-frame");
    }
    if (typeof Uint8Array.fromBase64 === "function") { return Uint8Array.fromBase64(text); }
    if (NodeBuffer) { return new Uint8Array(NodeBuffer.from(text, "base64")); }
    var bin = atob(text), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }

  /** v (parsed JSON) with every tagged form in it replaced by its bytes (in place). */
  function untag(v) {
    if (v === null || typeof v !== "object") { return v; }
    if (Array.isArray(v)) {
      for (var i = 0; i < v.length; i++) {
        var x = v[i];
        if (x !== null && typeof x === "object") { v[i] = untag(x); }
      }
      return v;
    }
    if (hasOwn.call(v, BYTES_TAG) && Object.keys(v).length === 1) { return fromBase64(v[BYTES_TAG]); }
    var keys = Object.keys(v);
    for (var j = 0; j < keys.length; j++) {
      var k = keys[j], y = v[k];
      if (y === null || typeof y !== "object") { continue; }
      var z = untag(y);
      if (z === y) { continue; }
      // "__proto__" from JSON.parse is an own property: keep it one
      Object.defineProperty(v, k, { value: z, enumerable: true, writable: true, configurable: true });
    }
    return v;
  }

  // -- MessagePack (packer "msgpack", protocol section 10) -----------------------------------
  // What JSON can carry, and bytes: nil, bool, int, float, str, bin, array, map with string keys.
  // Writing follows JSON.stringify: toJSON() is called (but a Uint8Array, a Node Buffer too,
  // is bin), undefined/functions/symbols are left out of maps and are nil in arrays, NaN
  // and +-Infinity are nil, BigInt is a TypeError, a map whose only key is "$bytes" is a
  // TypeError (the tagged form of bytes); integers of magnitude up to 2^53 - 1 are written
  // as the smallest int or uint, every other number as float64. Reading gives bin as a
  // Uint8Array (a copy) and refuses ext types, non-string map keys, invalid UTF-8,
  // truncated input, bytes after the value and nesting deeper than MAX_DEPTH; float32 is
  // read too, and a uint64/int64 beyond 2^53 becomes the nearest Number (precision is
  // lost, as JSON.parse loses it for the same number).
  /** Deepest nesting of arrays and maps ([] is 1), as the server's MAX_JSON_DEPTH. */
  var MAX_DEPTH = 100;
  /** Levels a chsk/batch adds around the frames it carries: [event, [frame, ...]]. */
  var BATCH_LEVELS = 2;
  var MAX_SAFE = 9007199254740991;
  var POW32 = 4294967296;
  /** Strings of at most this many bytes are read in JavaScript when ASCII (else by TextDecoder). */
  var SHORT_STR = 32;
  /** Strings longer than this (UTF-16 units) are written by TextEncoder.encodeInto, shorter ones in JavaScript. */
  var LONG_STR = 200;
  var textEncoder = typeof TextEncoder !== "undefined" ? new TextEncoder() : null;
  var textDecoder = null;
  try { textDecoder = new TextDecoder("utf-8", { fatal: true }); } catch (e) { /* none here */ }

  function MsgpackError(message) {
    return new SenteLiteError("msgpack: " + message, "bad-frame");
  }

  // Writing: one growable buffer, reused unless a toJSON() encodes again while it is in use.
  function Writer(size) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
    this.busy = false;
  }
  Writer.prototype.need = function (n) {
    if (this.pos + n <= this.buf.length) { return; }
    var size = this.buf.length * 2;
    while (size < this.pos + n) { size *= 2; }
    var grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  };
  var sharedWriter = null;

  /** The MessagePack bytes (a new Uint8Array) of value; TypeError when it cannot be written. */
  function mpEncode(value) {
    var w = sharedWriter && !sharedWriter.busy ? sharedWriter : new Writer(1024);
    if (!sharedWriter) { sharedWriter = w; }
    w.busy = true;
    w.pos = 0;
    try {
      mpWrite(w, value, 0);
      return w.buf.slice(0, w.pos);
    } finally {
      w.busy = false;
      if (w === sharedWriter && w.buf.length > 65536) { sharedWriter = null; }  // keep no huge buffer
    }
  }

  function mpWrite(w, v, depth) {
    if (v instanceof Uint8Array) { mpWriteBin(w, v); return; }
    if (v !== null && typeof v === "object" && typeof v.toJSON === "function") { v = v.toJSON(); }
    switch (typeof v) {
      case "string": mpWriteStr(w, v); return;
      case "number": mpWriteNumber(w, v); return;
      case "boolean": w.need(1); w.buf[w.pos++] = v ? 0xc3 : 0xc2; return;
      case "bigint": throw new TypeError("a BigInt is not JSON data: convert it to a Number or a string");
      case "object":
        if (v === null) { break; }
        if (v instanceof Number || v instanceof String || v instanceof Boolean) { mpWrite(w, v.valueOf(), depth); return; }
        if (depth >= MAX_DEPTH) { throw new TypeError("nests deeper than " + MAX_DEPTH + " (or is circular)"); }
        if (Array.isArray(v)) { mpWriteArray(w, v, depth + 1); } else { mpWriteMap(w, v, depth + 1); }
        return;
    }
    w.need(1);
    w.buf[w.pos++] = 0xc0;  // null, and what JSON writes as null (undefined, functions, symbols)
  }

  function mpHead(w, n, fix, fixMax, code16) {
    w.need(5);
    if (n <= fixMax) { w.buf[w.pos++] = fix | n; }
    else if (n < 65536) { w.buf[w.pos++] = code16; w.view.setUint16(w.pos, n); w.pos += 2; }
    else { w.buf[w.pos++] = code16 + 1; w.view.setUint32(w.pos, n); w.pos += 4; }
  }

  function mpWriteArray(w, a, depth) {
    var n = a.length;
    mpHead(w, n, 0x90, 15, 0xdc);
    for (var i = 0; i < n; i++) { mpWrite(w, a[i], depth); }
  }

  function mpWriteMap(w, m, depth) {
    var keys = Object.keys(m), n = 0;
    for (var i = 0; i < keys.length; i++) {  // the keys whose values JSON would write
      var t = typeof m[keys[i]];
      if (t !== "undefined" && t !== "function" && t !== "symbol") { keys[n++] = keys[i]; }
    }
    if (n === 1 && keys[0] === BYTES_TAG) { throw tagShapeError(); }
    mpHead(w, n, 0x80, 15, 0xde);
    for (var j = 0; j < n; j++) {
      mpWriteStr(w, keys[j]);
      mpWrite(w, m[keys[j]], depth);
    }
  }

  function mpWriteNumber(w, v) {
    w.need(9);
    var b = w.buf, view = w.view;
    if (Math.floor(v) === v && v <= MAX_SAFE && v >= -MAX_SAFE) {
      if (v >= 0) {
        if (v < 128) { b[w.pos++] = v; return; }
        if (v < 256) { b[w.pos++] = 0xcc; b[w.pos++] = v; return; }
        if (v < 65536) { b[w.pos++] = 0xcd; view.setUint16(w.pos, v); w.pos += 2; return; }
        if (v < POW32) { b[w.pos++] = 0xce; view.setUint32(w.pos, v); w.pos += 4; return; }
        b[w.pos++] = 0xcf;
        view.setUint32(w.pos, Math.floor(v / POW32));
        view.setUint32(w.pos + 4, v >>> 0);
        w.pos += 8;
        return;
      }
      if (v >= -32) { b[w.pos++] = v & 0xff; return; }
      if (v >= -128) { b[w.pos++] = 0xd0; view.setInt8(w.pos, v); w.pos += 1; return; }
      if (v >= -32768) { b[w.pos++] = 0xd1; view.setInt16(w.pos, v); w.pos += 2; return; }
      if (v >= -2147483648) { b[w.pos++] = 0xd2; view.setInt32(w.pos, v); w.pos += 4; return; }
      var hi = Math.floor(v / POW32);
      b[w.pos++] = 0xd3;
      view.setInt32(w.pos, hi);
      view.setUint32(w.pos + 4, v - hi * POW32);
      w.pos += 8;
      return;
    }
    if (v !== v || v === Infinity || v === -Infinity) { b[w.pos++] = 0xc0; return; }  // JSON writes null
    b[w.pos++] = 0xcb;
    view.setFloat64(w.pos, v);
    w.pos += 8;
  }

  function mpWriteBin(w, bytes) {
    var n = bytes.length;
    w.need(5 + n);
    if (n < 256) { w.buf[w.pos++] = 0xc4; w.buf[w.pos++] = n; }
    else if (n < 65536) { w.buf[w.pos++] = 0xc5; w.view.setUint16(w.pos, n); w.pos += 2; }
    else { w.buf[w.pos++] = 0xc6; w.view.setUint32(w.pos, n); w.pos += 4; }
    w.buf.set(bytes, w.pos);
    w.pos += n;
  }

  function strHeadSize(bytes) { return bytes < 32 ? 1 : bytes < 256 ? 2 : bytes < 65536 ? 3 : 5; }

  function mpWriteStr(w, s) {
    var n = s.length;
    // Room for the worst case (3 bytes per UTF-16 unit); the bytes move down when the
    // real length needs a shorter header, so every string gets its shortest form.
    var head = strHeadSize(n * 3);
    w.need(head + n * 3);
    var start = w.pos + head, bytes;
    if (n > LONG_STR && textEncoder && textEncoder.encodeInto) {
      bytes = textEncoder.encodeInto(s, w.buf.subarray(start)).written;
    } else {
      bytes = utf8Write(s, w.buf, start);
    }
    var real = strHeadSize(bytes);
    if (real !== head) { w.buf.copyWithin(w.pos + real, start, start + bytes); }
    var b = w.buf;
    if (real === 1) { b[w.pos] = 0xa0 | bytes; }
    else if (real === 2) { b[w.pos] = 0xd9; b[w.pos + 1] = bytes; }
    else if (real === 3) { b[w.pos] = 0xda; w.view.setUint16(w.pos + 1, bytes); }
    else { b[w.pos] = 0xdb; w.view.setUint32(w.pos + 1, bytes); }
    w.pos += real + bytes;
  }

  /** UTF-8 of s into buf at pos (a lone surrogate becomes U+FFFD, as with TextEncoder); returns the byte count. */
  function utf8Write(s, buf, pos) {
    var start = pos;
    for (var i = 0, n = s.length; i < n; i++) {
      var c = s.charCodeAt(i);
      if (c < 0x80) { buf[pos++] = c; continue; }
      if (c < 0x800) { buf[pos++] = 0xc0 | (c >> 6); buf[pos++] = 0x80 | (c & 0x3f); continue; }
      if (c >= 0xd800 && c <= 0xdfff) {
        var d = i + 1 < n ? s.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
          buf[pos++] = 0xf0 | (c >> 18);
          buf[pos++] = 0x80 | ((c >> 12) & 0x3f);
          buf[pos++] = 0x80 | ((c >> 6) & 0x3f);
          buf[pos++] = 0x80 | (c & 0x3f);
          continue;
        }
        c = 0xfffd;
      }
      buf[pos++] = 0xe0 | (c >> 12);
      buf[pos++] = 0x80 | ((c >> 6) & 0x3f);
      buf[pos++] = 0x80 | (c & 0x3f);
    }
    return pos - start;
  }

  // Reading.
  function bytesOf(input) {
    if (input instanceof Uint8Array) { return input; }  // a Node Buffer too
    if (ArrayBuffer.isView(input)) { return new Uint8Array(input.buffer, input.byteOffset, input.byteLength); }
    if (input instanceof ArrayBuffer || Object.prototype.toString.call(input) === "[object ArrayBuffer]") {
      return new Uint8Array(input);
    }
    return null;
  }

  /**
   * The value of the MessagePack bytes `input` (ArrayBuffer, Uint8Array or Node Buffer),
   * nested at most maxDepth (default MAX_DEPTH) deep. Throws a SenteLiteError (code
   * "bad-frame") for anything that is not exactly one JSON-like value.
   */
  function mpDecode(input, maxDepth) {
    var b = bytesOf(input);
    if (!b) { throw MsgpackError("need an ArrayBuffer or a Uint8Array, got " + (input === null ? "null" : typeof input)); }
    var r = { b: b, view: new DataView(b.buffer, b.byteOffset, b.byteLength), pos: 0,
              max: maxDepth === undefined ? MAX_DEPTH : maxDepth };
    var value = mpRead(r, 0);
    if (r.pos !== b.length) { throw MsgpackError((b.length - r.pos) + " bytes after the value (at byte " + r.pos + ")"); }
    return value;
  }

  /**
   * True when the JSON text nests arrays and objects deeper than maxDepth (brackets inside
   * strings do not count), checked before parsing as the server does (protocol section 2).
   */
  function jsonNestsDeeper(text, maxDepth) {
    if (text.length <= maxDepth) { return false; }  // too short to open maxDepth + 1 levels
    var depth = 0, inString = false;
    for (var i = 0, n = text.length; i < n; i++) {
      var c = text.charCodeAt(i);
      if (inString) {
        if (c === 0x5c) { i++; } else if (c === 0x22) { inString = false; }
      } else if (c === 0x22) {
        inString = true;
      } else if (c === 0x5b || c === 0x7b) {
        if (++depth > maxDepth) { return true; }
      } else if (c === 0x5d || c === 0x7d) {
        depth--;
      }
    }
    return false;
  }

  /** Position of the next n bytes of r, consumed. */
  function mpTake(r, n) {
    var p = r.pos;
    if (p + n > r.b.length) { throw MsgpackError("truncated: " + n + " bytes needed at byte " + p + " of " + r.b.length); }
    r.pos = p + n;
    return p;
  }

  function mpRead(r, depth) {
    var t = r.b[mpTake(r, 1)], view = r.view, p;
    if (t < 0x80) { return t; }
    if (t >= 0xe0) { return t - 0x100; }
    if (t < 0x90) { return mpReadMap(r, t & 0x0f, depth); }
    if (t < 0xa0) { return mpReadArray(r, t & 0x0f, depth); }
    if (t < 0xc0) { return mpReadStr(r, t & 0x1f); }
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return mpReadBin(r, r.b[mpTake(r, 1)]);
      case 0xc5: return mpReadBin(r, view.getUint16(mpTake(r, 2)));
      case 0xc6: return mpReadBin(r, view.getUint32(mpTake(r, 4)));
      case 0xca: return view.getFloat32(mpTake(r, 4));
      case 0xcb: return view.getFloat64(mpTake(r, 8));
      case 0xcc: return r.b[mpTake(r, 1)];
      case 0xcd: return view.getUint16(mpTake(r, 2));
      case 0xce: return view.getUint32(mpTake(r, 4));
      case 0xcf: p = mpTake(r, 8); return view.getUint32(p) * POW32 + view.getUint32(p + 4);
      case 0xd0: return view.getInt8(mpTake(r, 1));
      case 0xd1: return view.getInt16(mpTake(r, 2));
      case 0xd2: return view.getInt32(mpTake(r, 4));
      case 0xd3: p = mpTake(r, 8); return view.getInt32(p) * POW32 + view.getUint32(p + 4);
      case 0xd9: return mpReadStr(r, r.b[mpTake(r, 1)]);
      case 0xda: return mpReadStr(r, view.getUint16(mpTake(r, 2)));
      case 0xdb: return mpReadStr(r, view.getUint32(mpTake(r, 4)));
      case 0xdc: return mpReadArray(r, view.getUint16(mpTake(r, 2)), depth);
      case 0xdd: return mpReadArray(r, view.getUint32(mpTake(r, 4)), depth);
      case 0xde: return mpReadMap(r, view.getUint16(mpTake(r, 2)), depth);
      case 0xdf: return mpReadMap(r, view.getUint32(mpTake(r, 4)), depth);
    }
    var at = " (0x" + t.toString(16) + " at byte " + (r.pos - 1) + ")";
    if (t === 0xc1) { throw MsgpackError("0xc1 is never used" + at); }
    throw MsgpackError("ext type" + at + ": frames carry only what JSON can, no extension types");
  }

  function mpReadBin(r, n) {
    var p = mpTake(r, n);
    return r.b.slice(p, p + n);
  }

  function mpReadArray(r, n, depth) {
    if (depth >= r.max) { throw MsgpackError("nests deeper than " + r.max + " arrays and maps"); }
    if (n > r.b.length - r.pos) { throw MsgpackError("truncated: an array of " + n + " at byte " + r.pos); }
    var out = new Array(n);
    for (var i = 0; i < n; i++) { out[i] = mpRead(r, depth + 1); }
    return out;
  }

  function mpReadMap(r, n, depth) {
    if (depth >= r.max) { throw MsgpackError("nests deeper than " + r.max + " arrays and maps"); }
    if (n * 2 > r.b.length - r.pos) { throw MsgpackError("truncated: a map of " + n + " at byte " + r.pos); }
    var out = {};
    for (var i = 0; i < n; i++) {
      if (r.pos >= r.b.length) { mpTake(r, 1); }  // throws: truncated
      var t = r.b[r.pos];
      if (!((t >= 0xa0 && t <= 0xbf) || (t >= 0xd9 && t <= 0xdb))) {
        throw MsgpackError("map key at byte " + r.pos + " is not a string (0x" + t.toString(16) + ")");
      }
      var key;
      if (t <= 0xaf && t >= 0xa0) { r.pos++; key = mpReadKey(r, t & 0x0f); } else { key = mpRead(r, depth + 1); }
      var value = mpRead(r, depth + 1);
      if (key === "__proto__") {  // an own property, as JSON.parse makes it; never the prototype
        Object.defineProperty(out, key, { value: value, enumerable: true, writable: true, configurable: true });
      } else {
        out[key] = value;
      }
    }
    return out;
  }

  // Map keys of up to 15 bytes (nearly all) come from a small cache: a frame's keys repeat
  // (a list of records, the keys of every channel message), and a hit makes no new string.
  // Bounded: KEY_SLOTS entries, each replaced on a miss.
  var KEY_SLOTS = 4096;
  var keyStrings = new Array(KEY_SLOTS), keyBytes = new Array(KEY_SLOTS);

  function mpReadKey(r, n) {
    var p = mpTake(r, n), b = r.b, h = n, i;
    for (i = 0; i < n; i++) { h = (h * 31 + b[p + i]) | 0; }
    var slot = h & (KEY_SLOTS - 1), known = keyBytes[slot];
    if (known !== undefined && known.length === n) {
      for (i = 0; i < n && known[i] === b[p + i]; i++) { /* compare */ }
      if (i === n) { return keyStrings[slot]; }
    }
    r.pos = p;
    var key = mpReadStr(r, n);
    keyStrings[slot] = key;
    keyBytes[slot] = b.slice(p, p + n);
    return key;
  }

  function mpReadStr(r, n) {
    var p = mpTake(r, n), b = r.b;
    if (n <= SHORT_STR) {  // short ASCII (most keys and ids): cheaper than a TextDecoder call
      var s = "";
      for (var i = p, end = p + n; i < end; i++) {
        var c = b[i];
        if (c > 0x7f) { s = null; break; }
        s += String.fromCharCode(c);
      }
      if (s !== null) { return s; }
    }
    try {
      return textDecoder.decode(b.subarray(p, p + n));
    } catch (e) {
      throw MsgpackError("a string at byte " + p + " is not valid UTF-8");
    }
  }

  function utf8Length(text) {
    if (typeof TextEncoder !== "undefined") { return new TextEncoder().encode(text).length; }
    return unescape(encodeURIComponent(text)).length;
  }

  /** Full-jitter backoff: random(0, min(maxMs, baseMs * 2^attempt)), in ms. */
  function backoffDelay(attempt, baseMs, maxMs, random) {
    var r = random || Math.random;
    return r() * Math.min(maxMs, baseMs * Math.pow(2, Math.min(attempt, 32)));
  }

  function httpUrlOf(wsUrl) {
    return wsUrl.replace(/^ws(s?):/i, "http$1:");
  }

  function resolveUrl(url) {
    if (/^wss?:\/\//i.test(url)) { return url; }
    var loc = typeof location !== "undefined" ? location : null;
    if (/^https?:\/\//i.test(url)) { return url.replace(/^http(s?):/i, "ws$1:"); }
    if (loc && url.charAt(0) === "/") {
      return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + url;
    }
    throw new TypeError("url must be ws://, wss:// or (in a page) a path like /chsk: " + url);
  }

  function setQuery(url, params) {
    var hashless = url.split("#")[0];
    var q = hashless.indexOf("?");
    var base = q < 0 ? hashless : hashless.slice(0, q);
    var kept = q < 0 ? [] : hashless.slice(q + 1).split("&").filter(function (kv) {
      var key = decodeURIComponent(kv.split("=")[0]);
      return kv && !Object.prototype.hasOwnProperty.call(params, key);
    });
    Object.keys(params).forEach(function (k) {
      if (params[k] !== null && params[k] !== undefined && params[k] !== "") {
        kept.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    });
    return kept.length ? base + "?" + kept.join("&") : base;
  }

  function uuid4() {
    var c = typeof crypto !== "undefined" ? crypto : null;
    if (c && typeof c.randomUUID === "function") { return c.randomUUID(); }
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) { c.getRandomValues(b); }
    else { for (var i = 0; i < 16; i++) { b[i] = Math.floor(Math.random() * 256); } }
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  /** The Storage of option persistPositions: true is sessionStorage, an object with getItem/setItem itself. */
  function storageOf(option) {
    if (option === undefined || option === null || option === false) { return null; }
    if (option === true) {
      var store = null;
      try { store = typeof sessionStorage !== "undefined" ? sessionStorage : null; } catch (e) { store = null; }
      if (!store) { throw new TypeError("persistPositions: true needs sessionStorage, which this runtime lacks: pass a Storage"); }
      return store;
    }
    if (typeof option.getItem === "function" && typeof option.setItem === "function") { return option; }
    throw new TypeError("persistPositions must be true, false or a Storage (getItem/setItem), not " + typeof option);
  }

  /** A valid since: {offset: integer >= 0, epoch: non-empty string} (protocol section 9). */
  function isPosition(v) {
    return v !== null && typeof v === "object" && Number.isInteger(v.offset) && v.offset >= 0 &&
      typeof v.epoch === "string" && v.epoch.length > 0;
  }

  /** The positions kept under key in store ({channelId: {offset, epoch}}); unreadable entries are skipped. */
  function loadPositions(store, key) {
    var out = Object.create(null);
    if (!store) { return out; }
    var saved = null;
    try { saved = JSON.parse(store.getItem(key) || "null"); } catch (e) { saved = null; }
    if (saved && typeof saved === "object") {
      Object.keys(saved).forEach(function (ch) {
        if (isPosition(saved[ch])) { out[ch] = { offset: saved[ch].offset, epoch: saved[ch].epoch }; }
      });
    }
    return out;
  }

  function isThenable(v) { return v !== null && (typeof v === "object" || typeof v === "function") && typeof v.then === "function"; }

  /**
   * Ask the server at `url` (its ws:// URL) for the CSRF token of `clientId`
   * (GET /csrf-token, same origin only). Resolves to the token; rejects with a
   * ConnectRefused carrying `.status` when the server refuses.
   */
  function fetchCsrfToken(url, clientId, options) {
    var f = (options && options.fetch) || (typeof fetch !== "undefined" ? fetch : null);
    if (!f) { return Promise.reject(new SenteLiteError("no fetch() here: pass options.fetch")); }
    var target = setQuery(httpUrlOf(resolveUrl(url)).replace(/^(https?:\/\/[^\/?#]+).*$/i, "$1/csrf-token"),
                          { "client-id": clientId });
    return f(target, { cache: "no-store", credentials: "same-origin" }).then(function (resp) {
      if (!resp.ok) {
        return resp.text().then(function (body) {
          var err = new ConnectRefused("GET /csrf-token answered HTTP " + resp.status + ": " + body.trim());
          err.status = resp.status;
          throw err;
        });
      }
      return resp.json().then(function (body) {
        if (!body || typeof body["csrf-token"] !== "string") {
          throw new SenteLiteError("GET /csrf-token answered without a csrf-token");
        }
        return body["csrf-token"];
      });
    });
  }

  // -- the client ---------------------------------------------------------------------------
  /**
   * new Client(url, options): connects at once and keeps reconnecting until close().
   * See docs/browser.md for every option.
   */
  function Client(url, options) {
    if (!(this instanceof Client)) { return new Client(url, options); }
    var opts = options || {};
    this.url = resolveUrl(url);
    this.options = {};
    for (var k in DEFAULTS) { this.options[k] = opts[k] !== undefined ? opts[k] : DEFAULTS[k]; }
    if (PACKERS.indexOf(this.options.packer) < 0) {
      throw new TypeError("packer must be \"json\" or \"msgpack\", not " + JSON.stringify(this.options.packer));
    }
    /** "json" or "msgpack": the wire format of every connection of this client. */
    this.packer = this.options.packer;
    this._binary = this.packer === "msgpack";
    if (this._binary && !(textEncoder && textDecoder)) {
      throw new TypeError("the msgpack packer needs TextEncoder and TextDecoder, which this runtime lacks");
    }
    this._maxDepth = MAX_DEPTH + (this.options.batch ? BATCH_LEVELS : 0);
    this.clientId = opts.clientId || uuid4();
    this._token = opts.token !== undefined ? opts.token : null;
    if (this.options.tokenVia !== "subprotocol" && this.options.tokenVia !== "query") {
      throw new TypeError("tokenVia must be \"subprotocol\" or \"query\", not " + JSON.stringify(this.options.tokenVia));
    }
    this._tokenUsed = null;        // the token of the connection being opened (and refreshed)
    this._tokenAt = 0;             // when it was got (ms since the epoch)
    this._refreshTimer = null;
    this._refreshExp = null;       // the current token's exp (seconds since the epoch)
    this._csrfSource = typeof opts.csrfToken === "function" ? opts.csrfToken : null;
    /** The CSRF token sent on the next connect (the last handshake's, unless csrfToken is a function). */
    this.csrfToken = typeof opts.csrfToken === "string" ? opts.csrfToken : null;
    this._WebSocket = opts.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);
    this._fetch = opts.fetch || (typeof fetch !== "undefined" ? fetch.bind(globalThis) : null);
    this._log = opts.logger === undefined ? (typeof console !== "undefined" ? console : null) : opts.logger;
    if (!this._WebSocket) {
      throw new TypeError("no WebSocket constructor: pass options.WebSocket (under Node: require('ws'))");
    }

    /** "connecting" | "connected" | "reconnecting" | "closed" */
    this.status = CONNECTING;
    this.uid = null;
    this.connId = null;
    this.serverId = null;
    this.first = null;
    /** The last handshake's data map (conn-id, server-id, heartbeat-ms, ...). */
    this.handshake = null;
    /** A ConnectRefused once the server refused for good; the client is then closed. */
    this.refusal = null;

    this._statusHooks = [];
    this._recoveryHooks = [];
    this._outbox = new Map();      // cb-id -> publish awaiting its ack, in publish order
    this._roomWaiters = [];        // publish({ack}) calls waiting for room in the outbox
    this._publishSeq = 0;
    this._connSeq = 0;             // numbers the sockets: a publish remembers the one it went out on
    this._store = storageOf(opts.persistPositions);
    this._storeKey = opts.persistKey || "sente-lite:positions:" + this.url;
    this._stored = loadPositions(this._store, this._storeKey);
    this._persistTimer = null;
    this._onPageHide = null;
    this._handlers = Object.create(null);
    this._subs = new Map();
    this._serverHandlers = [];     // onServerChannel: messages of channels the server gave
    this._pending = new Map();
    this._queue = [];
    this._cbSeq = 0;
    this._attempt = 0;
    this._ws = null;
    this._closed = false;
    this._retryTimer = null;
    this._liveTimer = null;
    this._heartbeatMs = 5000;
    this._maxMessageBytes = Infinity;
    this._features = [];
    this._bytes = false;
    this._lastRecv = now();
    this._stats = {
      framesIn: 0, framesOut: 0, handshakes: 0, reconnectAttempts: 0, connectFailures: 0,
      channelMsgs: 0, channelGaps: 0, duplicatesDropped: 0, unsubscribedChannelMsgs: 0,
      unhandledEvents: 0, handlerErrors: 0, errorsFromServer: 0, badFramesFromServer: 0,
      strayReplies: 0, deadServerDetections: 0, pendingOverflows: 0, batchesIn: 0,
      publishAcks: 0, duplicatePublishAcks: 0, publishErrors: 0, publishesResent: 0,
      publishesOutcomeUnknown: 0, unackedPublishOverflows: 0, recoveryFailures: 0,
      tokenRefreshes: 0, tokenRefreshFailures: 0,
      subTokenRefreshes: 0, subTokenRefreshFailures: 0, subTokenRefused: 0, subTokenExpired: 0
    };
    this._watchPageHide();
    this._connect();
  }

  Client.prototype._warn = function () {
    if (this._log && this._log.warn) { this._log.warn.apply(this._log, ["sente-lite:"].concat([].slice.call(arguments))); }
  };
  Client.prototype._error = function () {
    if (this._log && this._log.error) { this._log.error.apply(this._log, ["sente-lite:"].concat([].slice.call(arguments))); }
  };

  // -- status --------------------------------------------------------------------------------
  Object.defineProperty(Client.prototype, "connected", {
    get: function () { return this.status === CONNECTED; }
  });

  /** Call fn(status) on every status change. Returns a function that removes fn. */
  Client.prototype.onStatus = function (fn) {
    var hooks = this._statusHooks;
    hooks.push(fn);
    return function () { var i = hooks.indexOf(fn); if (i >= 0) { hooks.splice(i, 1); } };
  };

  /**
   * Call fn({channelId, recovered, reason?, offset, epoch, since}) for the server's answer
   * to every subscribe sent with since (a stored position, a persisted one, or the last one
   * seen, after each reconnect), before that channel's next message, and for each
   * sente-lite/subscribed the server sends by itself. recovered false: messages after
   * `since` are lost for good (reason), live ones continue after `offset`. Returns a
   * function that removes fn. As Python's Client.on_recovery.
   */
  Client.prototype.onRecovery = function (fn) {
    if (typeof fn !== "function") { throw new TypeError("recovery handler must be a function"); }
    var hooks = this._recoveryHooks;
    hooks.push(fn);
    return function () { var i = hooks.indexOf(fn); if (i >= 0) { hooks.splice(i, 1); } };
  };

  /** Deprecated: the old name of onRecovery (same calls). */
  Client.prototype.onResubscribe = function (fn) {
    if (!this._warnedResubscribe) {
      this._warnedResubscribe = true;
      this._warn("onResubscribe() is deprecated: use onRecovery()");
    }
    return this.onRecovery(fn);
  };

  Client.prototype._setStatus = function (status) {
    if (this.status === status || this.status === CLOSED) { return; }
    this.status = status;
    var hooks = this._statusHooks.slice();
    for (var i = 0; i < hooks.length; i++) {
      try { hooks[i](status); } catch (e) { this._error("status hook threw", e); }
    }
  };

  /**
   * Resolves true once connected, false after timeoutMs (default 5000) or when the
   * client closes; rejects with the ConnectRefused when the server refused for good.
   */
  Client.prototype.waitConnected = function (timeoutMs) {
    var self = this;
    var ms = timeoutMs === undefined ? 5000 : timeoutMs;
    return new Promise(function (resolve, reject) {
      var timer = null, off = null;
      function check() {
        if (self.status === CONNECTED) { finish(); resolve(true); return true; }
        if (self.refusal) { finish(); reject(self.refusal); return true; }
        if (self.status === CLOSED) { finish(); resolve(false); return true; }
        return false;
      }
      function finish() { if (timer !== null) { clearTimeout(timer); } if (off) { off(); } }
      if (check()) { return; }
      off = self.onStatus(check);
      timer = setTimeout(function () { finish(); resolve(false); }, ms);
    });
  };

  // -- handlers -------------------------------------------------------------------------------
  /**
   * Call fn(data) for each `eventId` from the server. For a server request the first
   * handler's return value (or the value of the Promise it returns) is the reply.
   */
  Client.prototype.on = function (eventId, fn) {
    checkEventId(eventId);
    if (isReserved(eventId)) { throw new TypeError("cannot handle " + eventId + ": reserved namespace"); }
    if (typeof fn !== "function") { throw new TypeError("handler must be a function"); }
    (this._handlers[eventId] = this._handlers[eventId] || []).push(fn);
    return fn;
  };

  /** Remove fn (or every handler) for eventId. */
  Client.prototype.off = function (eventId, fn) {
    var list = this._handlers[eventId];
    if (!list) { return; }
    if (fn === undefined) { delete this._handlers[eventId]; return; }
    var i = list.indexOf(fn);
    if (i >= 0) { list.splice(i, 1); }
  };

  // -- sending ------------------------------------------------------------------------------
  /** Send an event. While disconnected it is queued; throws SendQueueFull when the queue is full. */
  Client.prototype.send = function (eventId, data) {
    checkEventId(eventId);
    this._sendFrame(encode(eventId, data, undefined, this._binary), null);
  };

  /**
   * Send a request; resolves to the reply. Rejects with RemoteError (`.code` from the
   * server), RequestTimeout, Disconnected, ClientClosed or SendQueueFull.
   */
  Client.prototype.request = function (eventId, data, opts) {
    try {
      checkEventId(eventId);
      return this._request(eventId, data, opts && opts.timeoutMs);
    } catch (e) {
      return Promise.reject(e);
    }
  };

  /** `onAnswer(reply, remoteError)` (optional) runs as the answer frame is handled, before the next frame. */
  Client.prototype._request = function (eventId, data, timeoutMs, onAnswer) {
    if (this._closed) { return Promise.reject(new ClientClosed("client closed")); }
    var self = this;
    var ms = timeoutMs === undefined || timeoutMs === null ? this.options.requestTimeoutMs : timeoutMs;
    var cbId = "c" + (++this._cbSeq);
    var frame = encode(eventId, data, cbId, this._binary);
    return new Promise(function (resolve, reject) {
      var entry = { resolve: resolve, reject: reject, sent: false, event: eventId, timer: null, onAnswer: onAnswer };
      entry.timer = setTimeout(function () {
        if (self._pending.get(cbId) === entry) {
          self._pending.delete(cbId);
          reject(new RequestTimeout("no reply to " + eventId + " within " + ms + " ms"));
        }
      }, ms);
      self._pending.set(cbId, entry);
      try {
        self._sendFrame(frame, cbId);
      } catch (e) {
        clearTimeout(entry.timer);
        self._pending.delete(cbId);
        reject(e);
      }
    });
  };

  /** Send `frame` (JSON text, or MessagePack bytes) now, or queue it while disconnected. */
  Client.prototype._sendFrame = function (frame, cbId) {
    if (this._closed) { throw new ClientClosed("client closed"); }
    this._checkSize(frame);
    if (this.status === CONNECTED && this._write(frame, cbId)) { return; }
    if (this._queue.length >= this.options.maxPendingSends) {
      this._stats.pendingOverflows++;
      throw new SendQueueFull(this._queue.length + " sends already wait for a connection (maxPendingSends=" +
                              this.options.maxPendingSends + ")");
    }
    this._queue.push([frame, cbId]);
  };

  /** Throws a SenteLiteError (code "too-large") for a frame over the server's max-message-bytes. */
  Client.prototype._checkSize = function (frame) {
    var max = this._maxMessageBytes;
    if (typeof frame === "string" ? frame.length * 3 > max && utf8Length(frame) > max : frame.length > max) {
      throw new SenteLiteError("frame of " + (typeof frame === "string" ? utf8Length(frame) : frame.length) +
                               " bytes is over the server's max-message-bytes (" + max + ")" +
                               (typeof frame === "string" && frame.indexOf('"$bytes"') >= 0
                                 ? "; JSON carries bytes in base64 (4/3 their size)" : ""), "too-large");
    }
  };

  Client.prototype._write = function (frame, cbId) {
    var ws = this._ws;
    if (!ws || ws.readyState !== 1) { return false; }
    try {
      ws.send(frame);
    } catch (e) {
      return false;
    }
    this._stats.framesOut++;
    if (cbId) {
      var entry = this._pending.get(cbId);
      if (entry) { entry.sent = true; }
    }
    return true;
  };

  // -- channels ------------------------------------------------------------------------------
  /**
   * Subscribe to channelId; fn({channelId, data, from, offset, epoch}) runs for each message.
   * Kept (and re-subscribed) across reconnects until unsubscribe(). Resolves to the server's
   * answer {channelId, offset, epoch, recovered?, reason?}; rejects (and drops the
   * subscription) when refused. Ignoring the Promise is fine: a refusal is then only logged.
   * opts.since ({offset, epoch}, e.g. a stored position()) asks the server to replay every
   * message after it first; with persistPositions the stored position of channelId is used
   * when no since is given. The answer to a subscribe with since goes to onRecovery too.
   * opts.onJoin / opts.onLeave: fn({channelId, member: {clientId, uid, connId, info}}) when a
   * member joins or leaves the channel (its namespace has join_leave), in order with its messages.
   * opts.token: the channel's subscription token (protocol section 16), a string or a function
   * (a Promise may resolve to it) asked at each subscribe and ahead of the token's exp;
   * opts.onTokenRefused(channelId, err): see "subscription tokens" below.
   */
  Client.prototype.subscribe = function (channelId, fn, opts) {
    var since = opts && opts.since !== undefined && opts.since !== null ? opts.since : null;
    try {
      checkChannelId(channelId);
      if (fn !== undefined && fn !== null && typeof fn !== "function") { throw new TypeError("handler must be a function"); }
      checkMoveHandlers(opts);
      checkSubToken(opts);
      if (since !== null && !isPosition(since)) {
        throw new TypeError("since must be {offset: integer >= 0, epoch: non-empty string}, not " + JSON.stringify(since));
      }
      if (this._closed) { throw new ClientClosed("client closed"); }
    } catch (e) {
      return Promise.reject(e);
    }
    var sub = this._subs.get(channelId);
    var isNew = !sub;
    if (!sub) {
      var start = since || this._stored[channelId] || null;
      sub = { handlers: [], epoch: start ? start.epoch : null, lastOffset: start ? start.offset : 0,
              answer: null, waiters: [], inFlight: false };
      this._subs.set(channelId, sub);
    }
    if (fn) { sub.handlers.push(fn); }
    addMoveHandlers(sub, opts);
    if (opts && opts.token !== undefined && opts.token !== null) {
      sub.token = opts.token;
      sub.onTokenRefused = opts.onTokenRefused || null;
    }
    var ms = opts && opts.timeoutMs !== undefined ? opts.timeoutMs : this.options.requestTimeoutMs;
    var promise = new Promise(function (resolve, reject) {
      if (sub.answer && !sub.inFlight) { resolve(sub.answer); return; }
      var waiter = { resolve: resolve, reject: reject, timer: null };
      waiter.timer = setTimeout(function () {
        var i = sub.waiters.indexOf(waiter);
        if (i >= 0) { sub.waiters.splice(i, 1); }
        reject(new RequestTimeout("subscribe to " + JSON.stringify(channelId) + " not answered within " + ms + " ms"));
      }, ms);
      sub.waiters.push(waiter);
    });
    if (isNew && this.status === CONNECTED) { this._sendSubscribe(channelId, sub); }
    // Subscribing and ignoring the Promise is normal use: a later rejection (refused, closed)
    // must not become an unhandled rejection (fatal under Node). Awaiting callers still see it.
    promise.catch(function () {});
    return promise;
  };

  /** {offset, epoch} of the last message seen on channelId (store it; pass it as since), or null before any. */
  Client.prototype.position = function (channelId) {
    var sub = this._subs.get(channelId);
    return sub && sub.epoch !== null ? { offset: sub.lastOffset, epoch: sub.epoch } : null;
  };

  Client.prototype._settleSub = function (sub, err, value) {
    var waiters = sub.waiters;
    sub.waiters = [];
    waiters.forEach(function (w) {
      clearTimeout(w.timer);
      if (err) { w.reject(err); } else { w.resolve(value); }
    });
  };

  /** Send the subscribe of channelId, with since when a position is known (protocol section 9),
   *  and its subscription token (got first when none is given). */
  Client.prototype._sendSubscribe = function (channelId, sub, token) {
    if (sub.token && token === undefined) { this._subscribeWithToken(channelId, sub); return; }
    var self = this;
    var body = { "channel-id": channelId };
    if (token !== undefined) { body.token = token; }
    var since = null;
    if (this._features.indexOf("history") >= 0 && sub.epoch !== null) {
      since = { offset: sub.lastOffset, epoch: sub.epoch };
      body.since = since;
    }
    sub.inFlight = true;
    sub.awaiting = since !== null;  // a server-given channel takes no message before the answer
    var sent;
    try {
      sent = this._request(EV_SUBSCRIBE, body, this.options.requestTimeoutMs, function (reply, err) {
        if (self._subs.get(channelId) === sub) { self._onSubscribeAnswer(channelId, sub, since, reply, err); }
      });
    } catch (e) {
      sent = Promise.reject(e);
    }
    sent.catch(function (err) {
      if (self._subs.get(channelId) !== sub || err instanceof RemoteError) { return; }
      sub.inFlight = false;  // disconnected, closed or timed out: sent again after the next handshake
      if (err instanceof RequestTimeout && self.status === CONNECTED) {
        self._subs.delete(channelId);
        self._settleSub(sub, err, null);
      }
    });
  };

  /** The answer to a subscribe, handled before the next frame (so before the channel's next message). */
  Client.prototype._onSubscribeAnswer = function (channelId, sub, since, reply, err) {
    sub.inFlight = false;
    sub.awaiting = false;
    if (err) {
      this._subs.delete(channelId);
      this._forgetPosition(channelId);
      this._subTokenRefused(channelId, sub, err);
      this._warn("subscribe to " + JSON.stringify(channelId) + " refused:", err.message);
      this._settleSub(sub, err, null);
      return;
    }
    var answer = {
      channelId: channelId,
      offset: reply && Number.isInteger(reply.offset) ? reply.offset : 0,
      epoch: reply ? reply.epoch : null
    };
    if (reply && typeof reply.recovered === "boolean") { answer.recovered = reply.recovered; }
    if (reply && reply.reason !== undefined) { answer.reason = reply.reason; }
    // Recovered: the server replays from sub.lastOffset + 1, keep it. Otherwise live
    // messages start after the answer's offset (a new epoch restarts the count).
    if (answer.recovered !== true && (answer.recovered === false || answer.epoch !== sub.epoch)) {
      sub.epoch = answer.epoch;
      sub.lastOffset = answer.offset;
      this._positionChanged(channelId, sub);
    }
    sub.answer = answer;
    this._planSubRefresh(channelId, sub);
    if (since !== null && answer.recovered !== undefined) { this._recovered(answer, since); }
    this._settleSub(sub, null, answer);
  };

  /** Tell the onRecovery hooks: answer plus the position it resumed from. */
  Client.prototype._recovered = function (answer, since) {
    if (answer.recovered === false) { this._stats.recoveryFailures++; }
    var notice = { channelId: answer.channelId, recovered: answer.recovered, offset: answer.offset,
                   epoch: answer.epoch, since: since };
    if (answer.reason !== undefined) { notice.reason = answer.reason; }
    var self = this;
    this._recoveryHooks.slice().forEach(function (fn) {
      try { fn(notice); } catch (e) { self._error("recovery hook threw", e); }
    });
  };

  /** Stop receiving channelId. Resolves once the server answered (at once when disconnected). */
  Client.prototype.unsubscribe = function (channelId, opts) {
    var sub = this._subs.get(channelId);
    if (!sub) { return Promise.resolve(); }
    this._subs.delete(channelId);
    this._forgetPosition(channelId);
    this._stopSubRefresh(sub);
    this._settleSub(sub, new SenteLiteError("unsubscribed from " + JSON.stringify(channelId), "unsubscribed"), null);
    if (this.status !== CONNECTED) { return Promise.resolve(); }
    return this._request(EV_UNSUBSCRIBE, { "channel-id": channelId }, opts && opts.timeoutMs).then(function () {});
  };

  /** The channels this client holds (re-subscribed after every reconnect). */
  Client.prototype.subscriptions = function () {
    return Array.from(this._subs.keys()).sort();
  };

  /** The channels the server subscribed this client to (feature "server-subs"), among subscriptions(). */
  Client.prototype.serverSubscriptions = function () {
    var out = [];
    this._subs.forEach(function (sub, channelId) { if (sub.server) { out.push(channelId); } });
    return out.sort();
  };

  /**
   * fn(msg) for each message of every channel the server subscribes this client to
   * (srv.subscribe, or at connect; protocol section 14); handlers given to subscribe() for
   * such a channel run too. Returns fn.
   */
  Client.prototype.onServerChannel = function (fn) {
    if (typeof fn !== "function") { throw new TypeError("onServerChannel takes a function"); }
    this._serverHandlers.push(fn);
    this._subs.forEach(function (sub) { if (sub.server && sub.handlers.indexOf(fn) < 0) { sub.handlers.push(fn); } });
    return fn;
  };

  /** A sente-lite/server-sub or server-unsub: the server subscribed this client to a channel, or took it back. */
  Client.prototype._onServerChannel = function (subscribed, data) {
    var channelId = data && typeof data === "object" ? data["channel-id"] : null;
    if (typeof channelId !== "string") {
      this._stats.badFramesFromServer++;
      this._warn("malformed " + (subscribed ? EV_SERVER_SUB : EV_SERVER_UNSUB) + ":", JSON.stringify(data));
      return;
    }
    var sub = this._subs.get(channelId);
    if (!subscribed) {
      if (sub) { this._subs.delete(channelId); this._forgetPosition(channelId); }
      return;
    }
    if (!sub) {  // new: live messages follow its offset (a held one keeps its position)
      var known = Number.isInteger(data.offset) && typeof data.epoch === "string";
      sub = { handlers: this._serverHandlers.slice(), epoch: known ? data.epoch : null,
              lastOffset: known ? data.offset : 0, waiters: [], inFlight: false,
              answer: { channelId: channelId, offset: known ? data.offset : 0, epoch: known ? data.epoch : null } };
      this._subs.set(channelId, sub);
      this._positionChanged(channelId, sub);
    }
    sub.server = true;
  };

  /**
   * One page of channelId's history (feature "history-api", protocol section 13):
   * opts {limit, since, reverse, page, timeoutMs}. Resolves {"channel-id", offset, epoch,
   * publications: [{offset, epoch, data, from}], next, recovered?}; pass next as page for
   * the following page (null: the last).
   */
  Client.prototype.history = function (channelId, opts) {
    opts = opts || {};
    var body = { "channel-id": channelId };
    try {
      checkChannelId(channelId);
      if (opts.limit !== undefined && opts.limit !== null) {
        if (!Number.isInteger(opts.limit) || opts.limit < 1) { throw new TypeError("limit must be an integer >= 1"); }
        body.limit = opts.limit;
      }
      if (opts.reverse) { body.reverse = true; }
      ["since", "page"].forEach(function (key) {
        var mark = opts[key];
        if (mark === undefined || mark === null) { return; }
        if (!isPosition(mark)) { throw new TypeError(key + " must be {offset: integer >= 0, epoch: non-empty string}"); }
        body[key] = { offset: mark.offset, epoch: mark.epoch };
      });
    } catch (e) {
      return Promise.reject(e);
    }
    return this._request(EV_HISTORY, body, opts.timeoutMs);
  };

  // -- persisted positions (option persistPositions) ---------------------------------------------
  Client.prototype._positionChanged = function (channelId, sub) {
    if (!this._store || sub.epoch === null) { return; }
    this._stored[channelId] = { offset: sub.lastOffset, epoch: sub.epoch };
    this._schedulePersist();
  };

  Client.prototype._forgetPosition = function (channelId) {
    if (!this._store || !(channelId in this._stored)) { return; }
    delete this._stored[channelId];
    this._schedulePersist();
  };

  Client.prototype._schedulePersist = function () {
    var self = this;
    if (this._persistTimer === null) {
      this._persistTimer = setTimeout(function () { self._persistTimer = null; self._persist(); }, PERSIST_DELAY_MS);
    }
  };

  /** Write the positions of held channels to the storage now (also on pagehide and close()). */
  Client.prototype._persist = function () {
    if (!this._store) { return; }
    if (this._persistTimer !== null) { clearTimeout(this._persistTimer); this._persistTimer = null; }
    try {
      this._store.setItem(this._storeKey, JSON.stringify(this._stored));
    } catch (e) {
      this._warn("cannot store channel positions (persistPositions):", e.message);
    }
  };

  Client.prototype._watchPageHide = function () {
    var self = this;
    if (!this._store || typeof addEventListener !== "function") { return; }
    this._onPageHide = function () { self._persist(); };
    addEventListener("pagehide", this._onPageHide);
  };

  // -- publishing --------------------------------------------------------------------------------
  /**
   * Publish data on channelId. Every publish carries an id (<clientId>:<n>) and stays in the
   * outbox until the server acknowledges it; after a reconnect it is sent again, same id, and
   * lands once. With {ack: true} resolves to {channelId, offset, delivered, duplicate?}; a
   * full outbox (maxUnackedPublishes) waits up to publishBlockMs (or opts.blockMs) for room,
   * then rejects with SendQueueFull. Without ack returns undefined and throws SendQueueFull
   * at once when the outbox is full.
   */
  Client.prototype.publish = function (channelId, data, opts) {
    var o = opts || {};
    var self = this;
    var body;
    try {
      checkChannelId(channelId);
      if (this._closed) { throw new ClientClosed("client closed"); }
      body = { "channel-id": channelId, data: data === undefined ? null : data };
      if (o.excludeSender) { body["exclude-sender?"] = true; }
      if (!o.ack) { this._admitPublish(body, null); return undefined; }
    } catch (e) {
      if (o.ack) { return Promise.reject(e); }
      throw e;
    }
    var blockMs = o.blockMs !== undefined ? o.blockMs : this.options.publishBlockMs;
    return new Promise(function (resolve, reject) {
      var entry = { resolve: resolve, reject: reject, timer: null, ms: o.timeoutMs };
      if (!self._outboxFull()) { self._admitOrReject(body, entry); return; }
      if (!(blockMs > 0)) { self._outboxOverflow(reject); return; }
      var waiter = { body: body, entry: entry, timer: null };
      waiter.timer = setTimeout(function () {
        var i = self._roomWaiters.indexOf(waiter);
        if (i >= 0) { self._roomWaiters.splice(i, 1); }
        self._outboxOverflow(reject, " (waited " + blockMs + " ms for room: is the server acknowledging?)");
      }, blockMs);
      self._roomWaiters.push(waiter);
    }).then(function (reply) {
      var out = { channelId: reply["channel-id"], offset: reply.offset, delivered: reply.delivered };
      if (reply.duplicate) { out.duplicate = true; }
      return out;
    });
  };

  Client.prototype._outboxFull = function () {
    return this._outbox.size + this._roomWaiters.length >= this.options.maxUnackedPublishes;
  };

  Client.prototype._outboxOverflow = function (reject, why) {
    this._stats.unackedPublishOverflows++;
    var err = new SendQueueFull(this._outbox.size + " publishes already await their ack (maxUnackedPublishes=" +
                                this.options.maxUnackedPublishes + ")" + (why || ""));
    if (reject) { reject(err); return; }
    throw err;
  };

  Client.prototype._admitOrReject = function (body, waiting) {
    try { this._admitPublish(body, waiting); } catch (e) { waiting.reject(e); }
  };

  /** Put a publish (with its id) in the outbox and send it when connected. */
  Client.prototype._admitPublish = function (body, waiting) {
    if (!waiting && this._outboxFull()) { this._outboxOverflow(null); }
    var self = this;
    body.id = this.clientId + ":" + (this._publishSeq + 1);
    var cbId = "c" + (this._cbSeq + 1);
    var frame = encode(EV_PUBLISH, body, cbId, this._binary);
    this._checkSize(frame);
    this._publishSeq++;
    this._cbSeq++;
    var pub = { id: body.id, cbId: cbId, frame: frame, sentOn: 0, waiting: waiting, tries: 0, retryTimer: null };
    this._outbox.set(cbId, pub);
    if (waiting) {
      var ms = waiting.ms === undefined || waiting.ms === null ? this.options.requestTimeoutMs : waiting.ms;
      waiting.timer = setTimeout(function () {
        if (pub.waiting !== waiting) { return; }
        pub.waiting = null;  // the caller stops waiting; the publish stays in the outbox
        waiting.reject(new RequestTimeout("publish on " + JSON.stringify(body["channel-id"]) + " not acknowledged within " +
                                          ms + " ms (it stays queued and is resent after a reconnect)"));
      }, ms);
    }
    if (this.status === CONNECTED) { this._sendPublish(pub); }
  };

  Client.prototype._sendPublish = function (pub) {
    clearTimeout(pub.retryTimer);
    pub.retryTimer = null;
    if (this._write(pub.frame, null)) { pub.sentOn = this._connSeq; return true; }
    return false;
  };

  /**
   * The server answered a publish: acknowledged (done), outcome-unknown (kept and sent
   * again, same id, after a backoff or the next handshake), or refused (not published).
   */
  Client.prototype._onPublishAnswer = function (pub, reply, err) {
    if (err && err.code === ERR_OUTCOME_UNKNOWN) {
      this._stats.publishesOutcomeUnknown++;
      var self = this;
      pub.sentOn = 0;
      clearTimeout(pub.retryTimer);
      pub.retryTimer = setTimeout(function () {
        pub.retryTimer = null;
        if (self._outbox.get(pub.cbId) === pub && self.status === CONNECTED && pub.sentOn === 0 && self._sendPublish(pub)) {
          self._stats.publishesResent++;
        }
      }, backoffDelay(pub.tries++, this.options.backoffBaseMs, this.options.backoffMaxMs));
      return;
    }
    this._outbox.delete(pub.cbId);
    clearTimeout(pub.retryTimer);
    var waiting = pub.waiting;
    if (err) {
      this._stats.publishErrors++;
      if (!waiting) { this._warn("publish " + pub.id + " refused:", err.message); }
    } else {
      this._stats.publishAcks++;
      if (reply && reply.duplicate) { this._stats.duplicatePublishAcks++; }
    }
    if (waiting) {
      clearTimeout(waiting.timer);
      if (err) { waiting.reject(err); } else { waiting.resolve(reply || {}); }
    }
    this._admitWaiting();
  };

  /** Room in the outbox: admit the publishes waiting for it, in order. */
  Client.prototype._admitWaiting = function () {
    while (this._roomWaiters.length && this._outbox.size < this.options.maxUnackedPublishes && !this._closed) {
      var w = this._roomWaiters.shift();
      clearTimeout(w.timer);
      this._admitOrReject(w.body, w.entry);
    }
  };

  /** After a handshake: every publish not acknowledged and not sent on this socket, in order. */
  Client.prototype._resendOutbox = function (ws) {
    var self = this;
    var ok = true;
    this._outbox.forEach(function (pub) {
      if (!ok || self._ws !== ws || pub.sentOn === self._connSeq) { return; }
      ok = self._sendPublish(pub);
      if (ok) { self._stats.publishesResent++; }
    });
  };

  /** Counters (frames, reconnects, gaps, handler errors, publishes) and queue sizes. */
  Client.prototype.stats = function () {
    var out = {};
    for (var k in this._stats) { out[k] = this._stats[k]; }
    out.status = this.status;
    out.pendingSends = this._queue.length;
    out.outstandingRequests = this._pending.size;
    out.unackedPublishes = this._outbox.size;
    out.subscriptions = this._subs.size;
    return out;
  };

  /** Close the connection for good; outstanding requests reject with ClientClosed. */
  Client.prototype.close = function () {
    if (this._closed) { return; }
    this._finish(new ClientClosed("client closed"));
  };

  Client.prototype._finish = function (err) {
    this._closed = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._stopLiveness();
    this._stopRefresh();
    var ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try { ws.close(CLOSE_NORMAL); } catch (e) { /* already closing */ }
    }
    this._failPending(err, false);
    var self = this;
    this._subs.forEach(function (sub) { self._stopSubRefresh(sub); self._settleSub(sub, err, null); });
    this._failOutbox(err);
    this._persist();
    if (this._onPageHide && typeof removeEventListener === "function") { removeEventListener("pagehide", this._onPageHide); }
    this._setStatus(CLOSED);
  };

  /** Closing: every publish waiting for its ack or for room rejects with err. */
  Client.prototype._failOutbox = function (err) {
    var waiting = this._roomWaiters.map(function (w) { clearTimeout(w.timer); return w.entry; });
    this._roomWaiters = [];
    this._outbox.forEach(function (pub) {
      clearTimeout(pub.retryTimer);
      if (pub.waiting) { clearTimeout(pub.waiting.timer); waiting.push(pub.waiting); }
    });
    this._outbox.clear();
    waiting.forEach(function (w) { w.reject(err); });
  };

  Client.prototype._failPending = function (err, sentOnly) {
    var doomed = [];
    this._pending.forEach(function (entry, cbId) {
      if (entry.sent || !sentOnly) { doomed.push([cbId, entry]); }
    });
    var self = this;
    doomed.forEach(function (pair) {
      self._pending.delete(pair[0]);
      clearTimeout(pair[1].timer);
      pair[1].reject(err);
    });
    if (!sentOnly) { this._queue = []; }
  };

  // -- connecting ------------------------------------------------------------------------------
  /** Resolves to {url, protocols} of the next upgrade: the token as the subprotocol offer
   *  "bearer.<token>" next to "sente-lite" (tokenVia "subprotocol", when it can be one), else ?token=. */
  Client.prototype._connectUrl = function () {
    var self = this;
    var token = this._tokenNow();
    var csrf = this._csrfSource ? this._csrfSource() : this.csrfToken;
    return Promise.all([token, csrf]).then(function (values) {
      if (self._csrfSource) { self.csrfToken = values[1] || null; }
      var t = values[0] || null;
      self._tokenUsed = t;
      self._tokenAt = Date.now();
      var inProtocol = t !== null && self.options.tokenVia === "subprotocol" && SUBPROTOCOL_TOKEN_RE.test(t);
      return { url: setQuery(self.url, { "client-id": self.clientId, "token": inProtocol ? null : t,
                                         "csrf-token": values[1], "packer": self._binary ? "msgpack" : null,
                                         "batch": self.options.batch ? "1" : null, "bytes": "1" }),
               protocols: inProtocol ? [SUBPROTOCOL, "bearer." + t] : null };
    });
  };

  /** The token now: a string as given, or a function's answer (a Promise may resolve to it).
   *  A function that throws, rejects or gives no token rejects with code "token-refused". */
  Client.prototype._tokenNow = function () {
    return tokenOf(this._token);
  };

  /** The token of `source` now (see _tokenNow). */
  function tokenOf(source) {
    if (typeof source !== "function") { return Promise.resolve(source); }
    return new Promise(function (resolve) { resolve(source()); }).then(function (t) {
      if (typeof t !== "string" || !t) { throw tokenRefused("the token source gave no token"); }
      return t;
    }, function (err) {
      if (err && err.code === "token-refused") { throw err; }
      throw tokenRefused("the token source failed: " + (err && err.message ? err.message : String(err)));
    });
  }

  function tokenRefused(message) {
    var err = new ConnectRefused(message);
    err.code = "token-refused";
    return err;
  }

  Client.prototype._connect = function () {
    var self = this;
    if (this._closed) { return; }
    var urlPromise;
    try {
      urlPromise = this._connectUrl();
    } catch (e) {
      urlPromise = Promise.reject(e);
    }
    urlPromise.then(function (target) {
      if (self._closed) { return; }
      self._open(target.url, target.protocols);
    }, function (err) {
      if (self._closed) { return; }
      self._stats.connectFailures++;
      if (err && err.code === "token-refused") { self._refuseToken(err); return; }
      if (err && FINAL_REFUSALS.indexOf(err.status) >= 0) {
        self._refuse(err.status, null, err.message);
        return;
      }
      self._warn("could not get a token or csrf-token:", err && err.message);
      self._retry();
    });
  };

  Client.prototype._open = function (url, protocols) {
    var self = this;
    var ws;
    try {
      ws = protocols ? new this._WebSocket(url, protocols) : new this._WebSocket(url);
    } catch (e) {
      this._stats.connectFailures++;
      this._warn("cannot open " + this.url + ":", e.message);
      this._retry();
      return;
    }
    if (this._binary) { ws.binaryType = "arraybuffer"; }
    var state = { opened: false, handshake: false, done: false, timedOut: false };
    this._lastUrl = url;
    this._lastProtocols = protocols;
    this._connSeq++;
    ws._senteState = state;
    this._ws = ws;
    var openTimer = setTimeout(function () {
      if (!state.handshake && !state.done) {
        state.timedOut = true;
        self._lost(ws, 1006, "no handshake within " + self.options.connectTimeoutMs + " ms");
      }
    }, this.options.connectTimeoutMs);
    state.openTimer = openTimer;
    ws.onopen = function () { state.opened = true; self._lastRecv = now(); };
    ws.onmessage = function (ev) { self._onMessage(ws, ev.data); };
    ws.onerror = function () { /* a close event follows */ };
    ws.onclose = function (ev) { self._lost(ws, ev.code, ev.reason); };
  };

  Client.prototype._detach = function (ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = function () { /* Node's ws emits an error when closed while connecting */ };
    if (ws._senteState) { clearTimeout(ws._senteState.openTimer); }
  };

  /** The socket `ws` is gone (closed, failed, timed out or found dead): clean up, then retry or stop. */
  Client.prototype._lost = function (ws, code, reason) {
    var state = ws._senteState;
    if (state.done) { return; }
    state.done = true;
    this._detach(ws);
    if (ws.readyState === 0 || ws.readyState === 1) {
      try { ws.close(CLOSE_NORMAL); } catch (e) { /* ignore */ }
    }
    if (this._ws === ws) { this._ws = null; }
    if (this._closed) { return; }
    this._stopLiveness();
    this._stopRefresh();
    var self = this;
    this._subs.forEach(function (sub) { sub.inFlight = false; self._stopSubRefresh(sub); });
    this._failPending(new Disconnected("connection lost with the request outstanding"), true);
    if (!state.handshake) { this._stats.connectFailures++; }
    if (code === CLOSE_POLICY) {
      this._refuse(null, code, "server closed the connection with 1008 (policy)" + (reason ? ": " + reason : ""));
      return;
    }
    if (!this.options.autoReconnect) {
      this._finish(new Disconnected("connection lost"));
      return;
    }
    this._setStatus(RECONNECTING);
    if (!state.opened && !state.timedOut) {
      // A browser WebSocket never sees the HTTP status of a refused upgrade: ask the server.
      this._probe().then(function (refusal) {
        if (self._closed) { return; }
        if (refusal) { self._refuse(refusal.status, null, refusal.message); } else { self._retry(); }
      });
      return;
    }
    this._retry();
  };

  /**
   * After a socket that never opened: GET the endpoint's http(s) URL with the same query.
   * The server runs the upgrade's checks and answers their verdict (401/403/...), or 200
   * when an upgrade would be admitted; resolves {status, message} for a final refusal, else null.
   */
  Client.prototype._probe = function () {
    var self = this;
    if (!this._fetch) { return Promise.resolve(null); }
    var init = { cache: "no-store", credentials: "omit" };
    if (this._lastProtocols) {  // the token went in the subprotocol offer: send it as a header
      init.headers = { "Authorization": "Bearer " + this._lastProtocols[1].slice("bearer.".length) };
    }
    return this._fetch(httpUrlOf(this._lastUrl), init).then(function (resp) {
      if (FINAL_REFUSALS.indexOf(resp.status) < 0) { return null; }
      return resp.text().then(function (body) {
        return { status: resp.status, message: "server refused the connection: HTTP " + resp.status + " " +
                 body.trim().slice(0, MAX_REFUSAL_TEXT) };
      });
    }).catch(function () { return null; });  // server unreachable: retry
  };

  Client.prototype._refuse = function (status, closeCode, message) {
    var err = new ConnectRefused(status ? (/^server refused|^GET /.test(message) ? message :
                                  "server refused the connection: HTTP " + status + " " + message) : message);
    err.status = status;
    err.closeCode = closeCode;
    this.refusal = err;
    this._warn(err.message);
    this._finish(err);
  };

  Client.prototype._retry = function () {
    var self = this;
    if (this._closed) { return; }
    this._setStatus(RECONNECTING);
    var delay = backoffDelay(this._attempt, this.options.backoffBaseMs, this.options.backoffMaxMs);
    this._attempt++;
    this._stats.reconnectAttempts++;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(function () { self._retryTimer = null; self._connect(); }, delay);
  };

  // -- token refresh (protocol section 12) -------------------------------------------------------
  /** The claims of a JWT, read without checking it (the server checks it); null when not one. */
  function jwtClaims(token) {
    if (typeof token !== "string" || token.length > MAX_TOKEN_CHARS) { return null; }
    var parts = token.split(".");
    if (parts.length !== 3 || typeof atob !== "function") { return null; }
    try {
      var b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      var text = atob(b64 + "===".slice((b64.length + 3) % 4));
      var claims = JSON.parse(textDecoder ? textDecoder.decode(Uint8Array.from(text, function (c) { return c.charCodeAt(0); }))
                                          : text);
      return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
    } catch (e) {
      return null;
    }
  }

  function isNumber(v) { return typeof v === "number" && isFinite(v); }

  /** After a handshake: a refresh timer when the server has feature "refresh", the token is a
   *  function and its expiry is known (the handshake's token-exp, else the token's exp). */
  Client.prototype._planRefresh = function (ws, info) {
    this._stopRefresh();
    this._refreshExp = null;
    if (typeof this._token !== "function" || this._features.indexOf(FEATURE_REFRESH) < 0) { return; }
    var claims = jwtClaims(this._tokenUsed) || {};
    var exp = isNumber(info["token-exp"]) ? info["token-exp"] : isNumber(claims.exp) ? claims.exp : null;
    if (exp === null) { return; }
    this._scheduleRefresh(ws, exp, isNumber(claims.iat) ? claims.iat * 1000 : this._tokenAt);
  };

  /** How long from now to refresh a token expiring at `exp` (seconds) got at `issuedMs`. */
  function refreshDelayMs(exp, issuedMs) {
    var life = Math.max(0, exp * 1000 - issuedMs);
    var dueMs = exp * 1000 - Math.min(REFRESH_MAX_AHEAD_MS, life * REFRESH_AHEAD_FRACTION);
    return Math.max(0, dueMs - Date.now());
  }

  Client.prototype._scheduleRefresh = function (ws, exp, issuedMs) {
    this._refreshExp = exp;
    this._armRefresh(ws, refreshDelayMs(exp, issuedMs));
  };

  Client.prototype._armRefresh = function (ws, delayMs) {
    var self = this;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = setTimeout(function () { self._refreshTimer = null; self._refresh(ws); }, delayMs);
    if (this._refreshTimer && typeof this._refreshTimer.unref === "function") { this._refreshTimer.unref(); }
  };

  Client.prototype._stopRefresh = function () {
    if (this._refreshTimer !== null) { clearTimeout(this._refreshTimer); this._refreshTimer = null; }
  };

  /** Get a fresh token and send chsk/refresh on `ws` (one round trip). A refusing token
   *  source closes the client for good; a failed refresh is tried again while the token lasts. */
  Client.prototype._refresh = function (ws) {
    var self = this;
    if (this._closed || this._ws !== ws || this.status !== CONNECTED) { return; }
    this._tokenNow().then(function (token) {
      if (self._closed || self._ws !== ws) { return null; }
      return self._request(EV_REFRESH, { token: token }, REFRESH_TIMEOUT_MS).then(function (reply) {
        var exp = reply && isNumber(reply.exp) ? reply.exp : null;
        if (exp === null || (self._refreshExp !== null && exp <= self._refreshExp)) {
          throw new SenteLiteError("the refresh gave no later exp");
        }
        self._stats.tokenRefreshes++;
        var claims = jwtClaims(token) || {};
        if (self._ws === ws) { self._scheduleRefresh(ws, exp, isNumber(claims.iat) ? claims.iat * 1000 : Date.now()); }
      });
    }).catch(function (err) {
      if (self._closed) { return; }
      if (err && err.code === "token-refused") { self._refuseToken(err); return; }
      self._stats.tokenRefreshFailures++;
      self._warn("token refresh failed:", err && (err.code || err.message));
      var retry = !(err && err.code === "forbidden") && self._refreshExp !== null &&
        Date.now() + REFRESH_RETRY_MS < self._refreshExp * 1000;
      if (retry && self._ws === ws) { self._armRefresh(ws, REFRESH_RETRY_MS); }
    });
  };

  /** The token source refused: the client stops for good (refusal, status closed). */
  Client.prototype._refuseToken = function (err) {
    this.refusal = err;
    this._warn(err.message);
    this._finish(err);
  };

  // -- subscription tokens (protocol section 16) ---------------------------------------------------
  // subscribe(ch, fn, {token, onTokenRefused}): each subscribe of ch (the first, and each after a
  // reconnect) carries a token from its source (a function is asked again each time); a function's
  // token is refreshed over the open socket with sente-lite/sub-refresh on the schedule of the
  // connection token's. onTokenRefused(channelId, err) runs when the server refuses the token (the
  // subscribe's, or a refresh's invalid-token, forbidden or not-subscribed), the source gives none
  // (code "token-refused"; the channel is then unsubscribed), or the server ended the subscription
  // at the token's expiry (code "token-expired"); in each case but a refused refresh the channel
  // is no longer held.

  /** Get the token of sub, then send its subscribe on the same socket. */
  Client.prototype._subscribeWithToken = function (channelId, sub) {
    var self = this, ws = this._ws;
    sub.inFlight = true;
    tokenOf(sub.token).then(function (token) {
      if (self._closed || self._subs.get(channelId) !== sub || self._ws !== ws) { return; }  // the next handshake sends it
      sub.tokenUsed = token;
      sub.tokenAt = Date.now();
      self._sendSubscribe(channelId, sub, token);
    }, function (err) {
      if (self._closed || self._subs.get(channelId) !== sub) { return; }
      sub.inFlight = false;
      self._subs.delete(channelId);
      self._forgetPosition(channelId);
      self._subTokenRefused(channelId, sub, err);
      self._settleSub(sub, err, null);
    });
  };

  /** After a subscribe answered: a refresh timer for a function's token on a server with "sub-token". */
  Client.prototype._planSubRefresh = function (channelId, sub) {
    this._stopSubRefresh(sub);
    sub.tokenExp = null;
    if (typeof sub.token !== "function" || this._features.indexOf(FEATURE_SUB_TOKEN) < 0) { return; }
    var claims = jwtClaims(sub.tokenUsed) || {};
    if (!isNumber(claims.exp)) { return; }
    this._scheduleSubRefresh(channelId, sub, claims.exp, isNumber(claims.iat) ? claims.iat * 1000 : sub.tokenAt);
  };

  Client.prototype._scheduleSubRefresh = function (channelId, sub, exp, issuedMs) {
    sub.tokenExp = exp;
    this._armSubRefresh(channelId, sub, refreshDelayMs(exp, issuedMs));
  };

  Client.prototype._armSubRefresh = function (channelId, sub, delayMs) {
    var self = this, ws = this._ws;
    this._stopSubRefresh(sub);
    sub.tokenTimer = setTimeout(function () { sub.tokenTimer = null; self._subRefresh(channelId, sub, ws); }, delayMs);
    if (typeof sub.tokenTimer.unref === "function") { sub.tokenTimer.unref(); }
  };

  Client.prototype._stopSubRefresh = function (sub) {
    if (sub.tokenTimer) { clearTimeout(sub.tokenTimer); sub.tokenTimer = null; }
  };

  /** Get a fresh token for channelId and send sente-lite/sub-refresh on `ws` (one round trip). */
  Client.prototype._subRefresh = function (channelId, sub, ws) {
    var self = this;
    function current() { return !self._closed && self._ws === ws && self._subs.get(channelId) === sub; }
    if (!current()) { return; }
    tokenOf(sub.token).then(function (token) {
      if (!current()) { return null; }
      return self._request(EV_SUB_REFRESH, { "channel-id": channelId, token: token }, REFRESH_TIMEOUT_MS).then(function (reply) {
        var exp = reply && isNumber(reply.exp) ? reply.exp : null;
        if (exp === null || (sub.tokenExp !== null && exp <= sub.tokenExp)) {
          throw new SenteLiteError("the sub-refresh gave no later exp");
        }
        self._stats.subTokenRefreshes++;
        var claims = jwtClaims(token) || {};
        if (current()) { self._scheduleSubRefresh(channelId, sub, exp, isNumber(claims.iat) ? claims.iat * 1000 : Date.now()); }
      });
    }).catch(function (err) {
      if (self._closed || self._subs.get(channelId) !== sub) { return; }
      var code = err && err.code;
      if (code === "token-refused") {
        self._subTokenRefused(channelId, sub, err);
        self.unsubscribe(channelId).catch(function () {});
        return;
      }
      self._stats.subTokenRefreshFailures++;
      self._warn("subscription token refresh failed:", code || (err && err.message));
      if (SUB_TOLD_REFUSALS.indexOf(code) >= 0) { self._tellTokenRefused(channelId, sub, err); }
      var retry = SUB_FINAL_REFUSALS.indexOf(code) < 0 && sub.tokenExp !== null &&
        Date.now() + REFRESH_RETRY_MS < sub.tokenExp * 1000;
      if (retry && self._ws === ws) { self._armSubRefresh(channelId, sub, REFRESH_RETRY_MS); }
    });
  };

  /** sub's token was refused for good: forget its source, tell its handler. */
  Client.prototype._subTokenRefused = function (channelId, sub, err) {
    this._stopSubRefresh(sub);
    if (!sub.token) { return; }
    sub.token = null;
    this._stats.subTokenRefused++;
    this._warn("subscription token for a channel refused:", err && err.code);
    this._tellTokenRefused(channelId, sub, err);
  };

  Client.prototype._tellTokenRefused = function (channelId, sub, err) {
    var fn = sub.onTokenRefused, self = this;
    if (typeof fn !== "function") { return; }
    try {
      var value = fn(channelId, err);
      if (value && typeof value.then === "function") {
        value.then(null, function (e) { self._stats.handlerErrors++; self._error("onTokenRefused rejected", e); });
      }
    } catch (e) {
      this._stats.handlerErrors++;
      this._error("onTokenRefused threw", e);
    }
  };

  /** sente-lite/unsubscribed with a reason: the server ended a held subscription (token-expired). */
  Client.prototype._onUnsubscribedNotice = function (data) {
    var channelId = data && data["channel-id"], reason = data && data.reason;
    var sub = typeof channelId === "string" && typeof reason === "string" ? this._subs.get(channelId) : undefined;
    if (!sub) { return; }
    this._subs.delete(channelId);
    this._forgetPosition(channelId);
    if (reason === "token-expired") { this._stats.subTokenExpired++; }
    var err = new RemoteError(reason === "token-expired" ? "the subscription token expired without a refresh"
                              : "the server ended the subscription (" + reason + ")", reason);
    this._subTokenRefused(channelId, sub, err);
    this._settleSub(sub, err, null);
  };

  // -- liveness ----------------------------------------------------------------------------------
  Client.prototype._startLiveness = function () {
    var self = this;
    this._stopLiveness();
    var limit = 2 * this._heartbeatMs + DEAD_SERVER_SLACK_MS;
    var tick = Math.max(100, Math.min(1000, this._heartbeatMs / 2));
    this._liveTimer = setInterval(function () {
      var ws = self._ws;
      if (!ws || self.status !== CONNECTED) { return; }
      var silent = now() - self._lastRecv;
      if (silent > limit) {
        self._stats.deadServerDetections++;
        self._warn("server silent for " + silent + " ms: dropping the connection");
        self._lost(ws, 1006, "server silent");
      }
    }, tick);
    if (this._liveTimer && typeof this._liveTimer.unref === "function") { this._liveTimer.unref(); }
  };

  Client.prototype._stopLiveness = function () {
    if (this._liveTimer !== null) { clearInterval(this._liveTimer); this._liveTimer = null; }
  };

  // -- receiving -----------------------------------------------------------------------------------
  function isFrame(f) {
    return Array.isArray(f) && f.length >= 1 && f.length <= 3 && typeof f[0] === "string" && EVENT_ID_RE.test(f[0]) &&
      (f.length < 3 || (typeof f[2] === "string" && f[2].length >= 1 && f[2].length <= MAX_CB_ID_CHARS));
  }

  Client.prototype._badFrame = function (what) {
    this._stats.badFramesFromServer++;
    this._warn("bad frame from server:", what);
  };

  Client.prototype._onMessage = function (ws, raw) {
    if (ws !== this._ws) { return; }
    this._lastRecv = now();
    this._stats.framesIn++;
    var frame = null, problem = null;
    if (this._binary) {
      if (typeof raw === "string") {
        problem = "a text frame on a msgpack connection" +
          (ws._senteState.handshake ? "" : " (a server older than packer=msgpack?)") + ": " + raw.slice(0, 200);
      } else {
        try { frame = mpDecode(raw, this._maxDepth); } catch (e) { problem = e.message; }
      }
    } else if (typeof raw === "string") {
      if (jsonNestsDeeper(raw, this._maxDepth)) {
        problem = "frame nests deeper than " + this._maxDepth + " levels";
      } else {
        try { frame = JSON.parse(raw); } catch (e) { frame = null; }
        if (frame !== null && this._bytes && MAY_HOLD_TAG_RE.test(raw)) {
          try { frame = untag(frame); } catch (e) { frame = null; problem = "frame holds malformed bytes: " + e.message; }
        }
      }
    } else {
      problem = "a binary frame on a JSON connection";  // protocol section 10
    }
    if (!isFrame(frame)) {
      this._badFrame(problem || (typeof raw === "string" ? raw.slice(0, 200) : "not [event-id, data?, cb-id?]"));
      return;
    }
    if (frame[0] === EV_BATCH) { this._onBatch(ws, frame[1]); return; }
    this._dispatch(ws, frame);
  };

  /** A chsk/batch: each frame in it, in order, as if it came alone (protocol section 10). */
  Client.prototype._onBatch = function (ws, frames) {
    if (!Array.isArray(frames)) { this._badFrame("chsk/batch data is not an array of frames"); return; }
    this._stats.batchesIn++;
    for (var i = 0; i < frames.length && ws === this._ws; i++) {
      var frame = frames[i];
      if (!isFrame(frame) || frame[0] === EV_BATCH) {
        this._badFrame("frame " + i + " of a chsk/batch is " + (isFrame(frame) ? "a batch" : "not [event-id, data?, cb-id?]"));
        continue;
      }
      this._dispatch(ws, frame);
    }
  };

  Client.prototype._dispatch = function (ws, frame) {
    var eventId = frame[0], data = frame.length > 1 ? frame[1] : null, cbId = frame.length > 2 ? frame[2] : null;
    switch (eventId) {
      case EV_CHANNEL_MSG: this._onChannelMsg(data); return;
      case EV_HANDSHAKE: this._onHandshake(ws, data); return;
      case EV_PING:
        this._write(cbId ? encode(EV_REPLY, null, cbId, this._binary) :
                    this._binary ? mpEncode([EV_PONG]) : JSON.stringify([EV_PONG]), null);
        return;
      case EV_SUBSCRIBED: this._onSubscribedNotice(data); return;
      case EV_JOIN: case EV_LEAVE: this._onPresenceChange(eventId === EV_JOIN, data); return;
      case EV_SERVER_SUB: case EV_SERVER_UNSUB: this._onServerChannel(eventId === EV_SERVER_SUB, data); return;
      case EV_PONG: return;
      case EV_UNSUBSCRIBED: this._onUnsubscribedNotice(data); return;
      case EV_REPLY: case EV_ERROR: this._onReply(eventId, data, cbId); return;
    }
    if (isReserved(eventId)) {
      if (cbId) { this._replyError("unknown-event", "unknown event " + eventId, cbId); }
      else { this._stats.unhandledEvents++; }
      return;
    }
    this._onEvent(eventId, data, cbId);
  };

  Client.prototype._onHandshake = function (ws, data) {
    if (!Array.isArray(data) || data.length !== 4 || data[2] === null || typeof data[2] !== "object") {
      this._stats.badFramesFromServer++;
      this._error("malformed handshake from server:", JSON.stringify(data));
      return;
    }
    var info = data[2];
    ws._senteState.handshake = true;
    clearTimeout(ws._senteState.openTimer);
    this.uid = data[0];
    if (!this._csrfSource || data[1]) { this.csrfToken = data[1]; }
    this.handshake = info;
    this.first = data[3];
    this.connId = info["conn-id"] || null;
    this.serverId = info["server-id"] || null;
    this._heartbeatMs = typeof info["heartbeat-ms"] === "number" && info["heartbeat-ms"] > 0 ? info["heartbeat-ms"] : 5000;
    this._maxMessageBytes = typeof info["max-message-bytes"] === "number" ? info["max-message-bytes"] : Infinity;
    this._features = Array.isArray(info.features) ? info.features : [];
    this._bytes = info.bytes === true;  // JSON's tagged forms are read as bytes (protocol section 10)
    if (info.protocol !== PROTOCOL_VERSION) {
      this._warn("server speaks protocol " + info.protocol + ", this client " + PROTOCOL_VERSION);
    }
    this._attempt = 0;
    this._stats.handshakes++;
    this._setStatus(CONNECTED);
    this._startLiveness();
    this._planRefresh(ws, info);
    var self = this;
    this._subs.forEach(function (sub, channelId) {
      if (self._ws === ws) { self._sendSubscribe(channelId, sub); }
    });
    this._resendOutbox(ws);
    while (this._queue.length && this._ws === ws) {
      var item = this._queue[0];
      if (item[1] && !this._pending.has(item[1])) { this._queue.shift(); continue; }  // its caller gave up
      if (!this._write(item[0], item[1])) { break; }
      this._queue.shift();
    }
  };

  Client.prototype._onReply = function (eventId, data, cbId) {
    if (!cbId) {
      if (eventId === EV_ERROR) {
        this._stats.errorsFromServer++;
        this._warn("error from server:", JSON.stringify(data));
      }
      return;
    }
    var pub = this._outbox.get(cbId);
    if (pub) { this._onPublishAnswer(pub, eventId === EV_REPLY ? data : null, eventId === EV_ERROR ? remoteError(data) : null); return; }
    var entry = this._pending.get(cbId);
    if (!entry) { this._stats.strayReplies++; return; }
    this._pending.delete(cbId);
    clearTimeout(entry.timer);
    var err = eventId === EV_ERROR ? remoteError(data) : null;
    if (entry.onAnswer) {
      try { entry.onAnswer(err ? null : data, err); } catch (e) { this._error("answer of " + entry.event + " failed", e); }
    }
    if (err) { entry.reject(err); } else { entry.resolve(data); }
  };

  function remoteError(data) {
    var code = data && typeof data.code === "string" ? data.code : "unknown";
    var message = data && typeof data.message === "string" ? data.message : "";
    var err = new RemoteError(code + ": " + message, code);
    err.remoteMessage = message;
    return err;
  }

  Client.prototype._onChannelMsg = function (data) {
    if (!data || typeof data !== "object" || typeof data["channel-id"] !== "string" ||
        !Number.isInteger(data.offset) || typeof data.epoch !== "string") {
      this._stats.badFramesFromServer++;
      this._warn("malformed channel message:", JSON.stringify(data));
      return;
    }
    var channelId = data["channel-id"];
    var sub = this._subs.get(channelId);
    if (!sub) { this._stats.unsubscribedChannelMsgs++; return; }
    if (sub.awaiting && sub.server) { return; }  // the replay after the answer carries it (section 14)
    if (sub.epoch === data.epoch) {
      if (data.offset <= sub.lastOffset) { this._stats.duplicatesDropped++; return; }
      if (data.offset > sub.lastOffset + 1) { this._stats.channelGaps += data.offset - sub.lastOffset - 1; }
    }
    sub.epoch = data.epoch;
    sub.lastOffset = data.offset;
    if (this._store) { this._positionChanged(channelId, sub); }
    this._stats.channelMsgs++;
    var msg = { channelId: channelId, data: data.data === undefined ? null : data.data,
                from: data.from === undefined ? null : data.from, offset: data.offset, epoch: data.epoch };
    var handlers = sub.handlers.slice();
    for (var i = 0; i < handlers.length; i++) {
      try {
        handlers[i](msg);
      } catch (e) {
        this._stats.handlerErrors++;
        this._error("channel handler for " + JSON.stringify(channelId) + " threw", e);
      }
    }
  };

  /** A sente-lite/join or sente-lite/leave of a held channel: its onJoin/onLeave handlers. */
  Client.prototype._onPresenceChange = function (joined, data) {
    var member = data && typeof data === "object" ? data.member : null;
    if (!member || typeof member !== "object" || typeof data["channel-id"] !== "string" ||
        typeof member["conn-id"] !== "string") {
      this._stats.badFramesFromServer++;
      this._warn("malformed " + (joined ? EV_JOIN : EV_LEAVE) + ":", JSON.stringify(data));
      return;
    }
    var channelId = data["channel-id"];
    var sub = this._subs.get(channelId);
    if (!sub) { this._stats.unsubscribedChannelMsgs++; return; }
    var change = { channelId: channelId, joined: joined, member: memberOf(member) };
    var handlers = ((joined ? sub.onJoin : sub.onLeave) || []).slice();
    for (var i = 0; i < handlers.length; i++) {
      try {
        handlers[i](change);
      } catch (e) {
        this._stats.handlerErrors++;
        this._error((joined ? "onJoin" : "onLeave") + " handler for " + JSON.stringify(channelId) + " threw", e);
      }
    }
  };

  /**
   * Members of channelId on every server: [{clientId, uid, connId, info}] (feature "presence";
   * the client must hold the channel and its namespace have presence, else RemoteError forbidden).
   */
  Client.prototype.presence = function (channelId, opts) {
    try { checkChannelId(channelId); } catch (e) { return Promise.reject(e); }
    return this._request(EV_PRESENCE, { "channel-id": channelId }, opts && opts.timeoutMs).then(function (reply) {
      return (reply && Array.isArray(reply.members) ? reply.members : []).map(memberOf);
    });
  };

  /** {members, users} of channelId (users: distinct uids); as presence(). */
  Client.prototype.presenceStats = function (channelId, opts) {
    try { checkChannelId(channelId); } catch (e) { return Promise.reject(e); }
    return this._request(EV_PRESENCE_STATS, { "channel-id": channelId }, opts && opts.timeoutMs);
  };

  /**
   * A sente-lite/subscribed the server sent by itself (protocol section 9): its broker lost
   * messages of a channel held here (recovered false, with a reason). Live messages continue
   * after its offset in its epoch; the onRecovery hooks are told, since the last position seen.
   */
  Client.prototype._onSubscribedNotice = function (data) {
    if (!data || typeof data !== "object" || typeof data.recovered !== "boolean") { return; }
    var channelId = data["channel-id"];
    var sub = typeof channelId === "string" ? this._subs.get(channelId) : undefined;
    if (!sub || !Number.isInteger(data.offset) || typeof data.epoch !== "string") { return; }
    var since = sub.epoch !== null ? { offset: sub.lastOffset, epoch: sub.epoch } : null;
    var answer = { channelId: channelId, offset: data.offset, epoch: data.epoch, recovered: data.recovered };
    if (data.reason !== undefined) { answer.reason = data.reason; }
    if (!data.recovered) {
      sub.epoch = data.epoch;
      sub.lastOffset = data.offset;
      this._positionChanged(channelId, sub);
    }
    this._recovered(answer, since);
  };

  Client.prototype._onEvent = function (eventId, data, cbId) {
    var handlers = (this._handlers[eventId] || []).slice();
    if (!handlers.length) {
      if (cbId) { this._replyError("no-handler", "no handler for " + eventId, cbId); }
      else { this._stats.unhandledEvents++; }
      return;
    }
    var self = this;
    var result = null, failed = null;
    for (var i = 0; i < handlers.length; i++) {
      try {
        var value = handlers[i](data);
        if (i === 0) { result = value; }
      } catch (e) {
        this._stats.handlerErrors++;
        this._error("handler for " + eventId + " threw", e);
        if (i === 0) { failed = e; }
      }
    }
    if (!cbId) { return; }
    if (failed) { this._replyError("handler-error", "handler for " + eventId + " threw " + (failed.name || "an error"), cbId); return; }
    Promise.resolve(result).then(function (value) {
      var frame;
      try {
        frame = encode(EV_REPLY, value, cbId, self._binary);
      } catch (e) {
        self._replyError("handler-error", "reply of " + eventId + " cannot be encoded (" + self.packer + ")", cbId);
        return;
      }
      self._trySend(frame);
    }, function (e) {
      self._stats.handlerErrors++;
      self._error("handler for " + eventId + " rejected", e);
      self._replyError("handler-error", "handler for " + eventId + " rejected with " + ((e && e.name) || "an error"), cbId);
    });
  };

  Client.prototype._replyError = function (code, message, cbId) {
    this._trySend(encode(EV_ERROR, { code: code, message: message }, cbId, this._binary));
  };

  Client.prototype._trySend = function (frame) {
    try {
      this._sendFrame(frame, null);
    } catch (e) {
      this._warn("reply dropped:", e.message);
    }
  };

  Client.CONNECTING = CONNECTING;
  Client.CONNECTED = CONNECTED;
  Client.RECONNECTING = RECONNECTING;
  Client.CLOSED = CLOSED;

  return {
    Client: Client,
    SenteLiteError: SenteLiteError,
    RemoteError: RemoteError,
    RequestTimeout: RequestTimeout,
    Disconnected: Disconnected,
    ClientClosed: ClientClosed,
    ConnectRefused: ConnectRefused,
    SendQueueFull: SendQueueFull,
    fetchCsrfToken: fetchCsrfToken,
    backoffDelay: backoffDelay,
    /** The MessagePack codec of packer "msgpack": encode(value) -> Uint8Array, decode(bytes, maxDepth?). */
    msgpack: { encode: mpEncode, decode: mpDecode, MAX_DEPTH: MAX_DEPTH },
    DEFAULTS: DEFAULTS,
    VERSION: VERSION,
    PROTOCOL_VERSION: PROTOCOL_VERSION
  };
})();
if (typeof module === "object" && module && module.exports) { module.exports = SenteLite; } // sente-lite:export
