// Type declarations of sente_lite.js (the browser and Node client of sente_lite).
// Reference: docs/browser.md. Wire protocol: docs/protocol.md.

export type Status = "connecting" | "connected" | "reconnecting" | "closed";
/** Wire format: "json" (text frames) or "msgpack" (MessagePack in binary frames). */
export type Packer = "json" | "msgpack";

/** A credential or CSRF token: a string, or a function evaluated at every (re)connect (and, for
 *  `token` on a server with feature "refresh", before the token expires). A token function that
 *  throws, rejects or gives no token stops the client (refusal with code "token-refused"). */
export type TokenSource = string | null | (() => string | null | Promise<string | null>);
/** A channel's subscription token (protocol section 16): a string, or a function asked at each
 *  subscribe and ahead of the token's exp (one that throws, rejects or gives none: "token-refused"). */
export type SubTokenSource = string | (() => string | null | Promise<string | null>);
/** Told when the server refuses the channel's token (its RemoteError code), the source gives none
 *  ("token-refused"; the channel is unsubscribed) or the subscription ended at expiry ("token-expired"). */
export type TokenRefusedHandler = (channelId: string, error: SenteLiteError) => void | Promise<void>;

export interface ClientOptions {
  /** Stable id of this client across its reconnects (default: a random UUID). */
  clientId?: string;
  /** The credential. Browsers cannot set an Authorization header on a WebSocket: it goes as the
   *  subprotocol offer "sente-lite, bearer.<token>" (tokenVia "subprotocol", when the token is made
   *  of the characters a subprotocol name may hold, as a JWT is), else as ?token=. With a function
   *  and a server with feature "refresh" (JWT tokens), it is refreshed over the open socket. */
  token?: TokenSource;
  /** Where the token goes: "subprotocol" (default; out of the URL) or "query" (?token=, for a
   *  server older than the subprotocol offer, which browsers would otherwise fail). */
  tokenVia?: "subprotocol" | "query";
  /** For a server with CSRF on: a token (e.g. embedded in the page) or a function such as
   *  () => fetchCsrfToken(url, clientId). A plain string is replaced by each handshake's token. */
  csrfToken?: TokenSource;
  /** WebSocket constructor; default the global one (under Node: require("ws")). */
  WebSocket?: unknown;
  /** fetch(), for the refusal probe; default the global one. */
  fetch?: typeof fetch;
  /** Reconnect delay = random(0, min(backoffMaxMs, backoffBaseMs * 2^n)); defaults 250 and 10000. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Frames queued while disconnected (default 1000); one more throws SendQueueFull. */
  maxPendingSends?: number;
  /** Default timeout of request(), subscribe() and publish({ack}) (default 5000). */
  requestTimeoutMs?: number;
  /** One connection attempt: open + handshake (default 10000). */
  connectTimeoutMs?: number;
  /** Reconnect after a lost connection (default true). */
  autoReconnect?: boolean;
  /** "json" (default) or "msgpack": MessagePack in binary frames (?packer=msgpack; the server
   *  needs its [msgpack] extra, else it refuses with HTTP 400). Data must be JSON-like either way,
   *  plus bytes: a Uint8Array anywhere in data arrives as a Uint8Array (JSON: {"$bytes": base64}
   *  on the wire; MessagePack: bin). An object whose only key is "$bytes" is refused (TypeError). */
  packer?: Packer;
  /** Ask the server (?batch=1) to send frames that wait for this busy connection as one
   *  chsk/batch frame (default false). Batches are read either way. */
  batch?: boolean;
  /** Where warnings go (default console; null for none). */
  logger?: Pick<Console, "warn" | "error"> | null;
  /** Publishes awaiting their acknowledgement (default 1000); see publish(). */
  maxUnackedPublishes?: number;
  /** publish({ack: true}) with a full outbox waits this long for room (default 5000; 0: rejects at once). */
  publishBlockMs?: number;
  /** true (sessionStorage) or a Storage: channel positions survive a page reload and resume with since. */
  persistPositions?: boolean | Pick<Storage, "getItem" | "setItem">;
  /** Storage key of the positions (default "sente-lite:positions:" + url). */
  persistKey?: string;
}

/** One connection subscribed to a channel with presence (protocol section 15). */
export interface PresenceMember {
  clientId: string | null;
  uid: string | null;
  connId: string;
  /** The info claim of the connection's JWT token, else null. */
  info: unknown;
}

/** A member joined or left a subscribed channel (sente-lite/join, sente-lite/leave). */
export interface PresenceChange {
  channelId: string;
  joined: boolean;
  member: PresenceMember;
}

/** A channel position: pass it to subscribe() as since to resume after it. */
export interface Position {
  offset: number;
  epoch: string;
}

/** The answer to a subscribe sent with since, or a sente-lite/subscribed notice (protocol section 9). */
export interface Recovery {
  channelId: string;
  /** false: messages after `since` are lost for good; live ones continue after offset. */
  recovered: boolean;
  reason?: "epoch-changed" | "history-expired" | "history-off";
  offset: number;
  epoch: string;
  /** The position the subscribe resumed from (null for a notice before any message). */
  since: Position | null;
}

export interface ChannelMessage<T = unknown> {
  channelId: string;
  data: T;
  /** uid of the publisher; null for a publish made by the server itself. */
  from: string | null;
  offset: number;
  epoch: string;
}

export interface Subscribed {
  channelId: string;
  offset: number;
  epoch: string;
  /** Present once the server does history recovery (protocol section 9). */
  recovered?: boolean;
  reason?: "epoch-changed" | "history-expired" | "history-off";
}

/** One message of a history page (protocol section 13). */
export interface HistoryPublication<T = unknown> {
  offset: number;
  epoch: string;
  data: T;
  from: string | null;
  traceparent?: string;
}

/** A page of a channel's history (feature "history-api", protocol section 13). */
export interface HistoryPage<T = unknown> {
  "channel-id": string;
  /** The channel's newest kept message (0 and null when none). */
  offset: number;
  epoch: string | null;
  /** Only with since: false when history no longer reaches back to it. */
  recovered?: boolean;
  publications: HistoryPublication<T>[];
  /** Pass as `page` for the next page; null on the last. */
  next: Position | null;
}

export interface Published {
  channelId: string;
  offset: number;
  delivered: number;
  /** true when an earlier send of this publish (same id) had landed. */
  duplicate?: true;
}

export interface Stats {
  framesIn: number; framesOut: number; handshakes: number; reconnectAttempts: number;
  connectFailures: number; channelMsgs: number; channelGaps: number; duplicatesDropped: number;
  unsubscribedChannelMsgs: number; unhandledEvents: number; handlerErrors: number;
  errorsFromServer: number; badFramesFromServer: number; strayReplies: number;
  deadServerDetections: number; pendingOverflows: number;
  /** chsk/batch frames received (framesIn counts WebSocket messages, a batch as one). */
  batchesIn: number;
  publishAcks: number; duplicatePublishAcks: number; publishErrors: number; publishesResent: number;
  publishesOutcomeUnknown: number; unackedPublishOverflows: number; recoveryFailures: number;
  /** chsk/refresh answered with a later exp / failed (protocol section 12). */
  tokenRefreshes: number; tokenRefreshFailures: number;
  /** sente-lite/sub-refresh answered with a later exp / failed; subscription tokens refused; subscriptions ended at expiry. */
  subTokenRefreshes: number; subTokenRefreshFailures: number; subTokenRefused: number; subTokenExpired: number;
  status: Status; pendingSends: number; outstandingRequests: number; unackedPublishes: number;
  subscriptions: number;
}

export class SenteLiteError extends Error {
  constructor(message: string, code?: string);
  /** A protocol error code (RemoteError) or a local one: timeout, disconnected, closed, refused, limit-exceeded, too-large. */
  code: string;
}
export class RemoteError extends SenteLiteError { remoteMessage: string; }
export class RequestTimeout extends SenteLiteError {}
export class Disconnected extends SenteLiteError {}
export class ClientClosed extends SenteLiteError {}
export class SendQueueFull extends SenteLiteError {}
export class ConnectRefused extends SenteLiteError {
  /** HTTP status of the refused upgrade (400, 401, 403, 404), else null. */
  status: number | null;
  /** 1008 when the server closed the connection for policy, else null. */
  closeCode: number | null;
}

export class Client {
  /** Connects at once; `url` is ws://, wss://, or in a page a path such as "/chsk". */
  constructor(url: string, options?: ClientOptions);
  static readonly CONNECTING: "connecting";
  static readonly CONNECTED: "connected";
  static readonly RECONNECTING: "reconnecting";
  static readonly CLOSED: "closed";

  readonly url: string;
  readonly clientId: string;
  /** The wire format of every connection of this client (the packer option). */
  readonly packer: Packer;
  readonly status: Status;
  readonly connected: boolean;
  readonly uid: string | null;
  readonly connId: string | null;
  readonly serverId: string | null;
  readonly first: boolean | null;
  readonly handshake: Record<string, unknown> | null;
  readonly csrfToken: string | null;
  /** Set once the server refused for good; the client is then closed. */
  readonly refusal: ConnectRefused | null;

  /** fn(status) on every change; returns a function that removes fn. */
  onStatus(fn: (status: Status) => void): () => void;
  /** fn(recovery) for the answer to every subscribe sent with since and every sente-lite/subscribed
   *  notice, before that channel's next message; returns a function that removes fn. */
  onRecovery(fn: (recovery: Recovery) => void): () => void;
  /** @deprecated the old name of onRecovery. */
  onResubscribe(fn: (recovery: Recovery) => void): () => void;
  /** true once connected; false on timeout (default 5000 ms) or close; rejects with ConnectRefused. */
  waitConnected(timeoutMs?: number): Promise<boolean>;

  /** Handle an application event; for a server request the first handler's value (or Promise) is the reply. */
  on<T = unknown>(eventId: string, fn: (data: T) => unknown): (data: T) => unknown;
  off(eventId: string, fn?: (data: any) => unknown): void;
  /** Send an event (queued while disconnected). */
  send(eventId: string, data?: unknown): void;
  /** Send a request; resolves to the reply. */
  request<R = unknown>(eventId: string, data?: unknown, options?: { timeoutMs?: number }): Promise<R>;

  subscribe<T = unknown>(channelId: string, fn?: (msg: ChannelMessage<T>) => void,
                         options?: { timeoutMs?: number; since?: Position | null;
                                     onJoin?: (change: PresenceChange) => void;
                                     onLeave?: (change: PresenceChange) => void;
                                     token?: SubTokenSource | null;
                                     onTokenRefused?: TokenRefusedHandler | null }): Promise<Subscribed>;
  /** Members of channelId on every server (feature "presence"; the client must hold the
   *  channel and its namespace have presence, else RemoteError "forbidden"). */
  presence(channelId: string, options?: { timeoutMs?: number }): Promise<PresenceMember[]>;
  /** Member and distinct-user counts of channelId; as presence(). */
  presenceStats(channelId: string, options?: { timeoutMs?: number }): Promise<{ members: number; users: number }>;
  /** Position of the last message seen on channelId, or null before any. */
  position(channelId: string): Position | null;
  unsubscribe(channelId: string, options?: { timeoutMs?: number }): Promise<void>;
  subscriptions(): string[];
  /** The channels the server subscribed this client to (feature "server-subs"), among subscriptions(). */
  serverSubscriptions(): string[];
  /** fn(msg) for each message of every channel the server subscribes this client to. Returns fn. */
  onServerChannel<T = unknown>(fn: (msg: ChannelMessage<T>) => void): (msg: ChannelMessage<T>) => void;
  /** One page of channelId's history (feature "history-api"): at most `limit` after `since`,
   *  oldest first (`reverse`: newest first), from `page` (a previous page's `next`). */
  history<T = unknown>(channelId: string, options?: { limit?: number; since?: Position | null;
                                                      reverse?: boolean; page?: Position | null;
                                                      timeoutMs?: number }): Promise<HistoryPage<T>>;
  publish(channelId: string, data: unknown,
          options: { ack: true; excludeSender?: boolean; timeoutMs?: number; blockMs?: number }): Promise<Published>;
  publish(channelId: string, data?: unknown,
          options?: { ack?: false; excludeSender?: boolean }): void;

  stats(): Stats;
  close(): void;
}

/** GET /csrf-token of the server at `url` (same origin only); resolves to the token. */
export function fetchCsrfToken(url: string, clientId: string, options?: { fetch?: typeof fetch }): Promise<string>;
/** Full-jitter backoff in ms: random(0, min(maxMs, baseMs * 2^attempt)). */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, random?: () => number): number;
export const VERSION: string;

/** The MessagePack codec of packer "msgpack" (JSON-like values and bytes); on the default export. */
export interface MsgpackCodec {
  /** Bytes of value, written as JSON.stringify would (toJSON, undefined left out), a Uint8Array as
   *  bin; TypeError for a BigInt, a map whose only key is "$bytes", or nesting deeper than MAX_DEPTH.
   *  Integers up to 2^53 - 1 as int, other numbers float64. */
  encode(value: unknown): Uint8Array;
  /** The value of exactly one MessagePack object, bin as a Uint8Array (a copy); SenteLiteError
   *  (code "bad-frame") for ext types, non-string map keys, invalid UTF-8, truncation, trailing
   *  bytes or nesting deeper than maxDepth (default MAX_DEPTH). A uint64/int64 beyond 2^53 becomes
   *  the nearest Number. */
  decode(bytes: ArrayBuffer | ArrayBufferView, maxDepth?: number): unknown;
  readonly MAX_DEPTH: number;
}

declare const SenteLite: {
  Client: typeof Client; SenteLiteError: typeof SenteLiteError; RemoteError: typeof RemoteError;
  RequestTimeout: typeof RequestTimeout; Disconnected: typeof Disconnected;
  ClientClosed: typeof ClientClosed; ConnectRefused: typeof ConnectRefused;
  SendQueueFull: typeof SendQueueFull; fetchCsrfToken: typeof fetchCsrfToken;
  backoffDelay: typeof backoffDelay; VERSION: string; msgpack: MsgpackCodec;
};
export default SenteLite;
