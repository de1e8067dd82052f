// Types of the tokenbridge browser client: tokenbridge.mjs (the ES module, through tokenbridge.d.mts) and
// tokenbridge.js (the plain script: `Tokenbridge.stream(...)` on window).

/** One event of a generation, as both transports deliver it. */
export interface TokenbridgeEvent {
  /** `token`, `reasoning`, `tool_call`, `restart`, `reset`, `done`, `error` or `cancelled`. */
  event: string;
  /** Stream entry id: the cursor to resume after this event. */
  id: string;
  /** The event's JSON data (`seq`, `content`, `finish_reason`, `usage`, ...). */
  data: Record<string, any>;
}

/** Something that went wrong: the generation's `error` event, a refused request or a lost connection. */
export interface TokenbridgeError {
  /** snake_case code: the event's or the HTTP error's, or `connection_lost`. */
  code: string;
  message: string;
  /** True for the generation's own `error` event. */
  terminal: boolean;
  /** True when the reader has stopped (no more callbacks follow). */
  fatal: boolean;
  /** HTTP status of a refused request. */
  status?: number;
}

/** The reader's status; the last five are final. */
export type TokenbridgeStatus =
  | "connecting"
  | "open"
  | "reconnecting"
  | "done"
  | "error"
  | "cancelled"
  | "ended"
  | "closed";

/** A tool call of the model, joined from its `tool_call` events. */
export interface TokenbridgeToolCall {
  id: string;
  name: string;
  /** JSON text of the arguments; complete once the generation is done. */
  arguments: string;
}

/** What `stream` and `socket` return. */
export interface TokenbridgeHandle {
  /** The answer so far. */
  readonly text: string;
  /** The model's reasoning so far (`reasoning` events). */
  readonly reasoning: string;
  /** The model's tool calls so far, by index (`tool_call` events). */
  readonly toolCalls: TokenbridgeToolCall[];
  /** Id of the last event received ("" before the first). */
  readonly lastEventId: string;
  readonly status: TokenbridgeStatus;
  /** True once the reader has stopped. */
  readonly finished: boolean;
  readonly transport: "sse" | "ws";
  /** Asks the server to cancel the generation; rejects with an Error carrying `code` and `status` when refused. */
  cancel(): Promise<void>;
  /** Stops reading; no callback runs afterwards. */
  close(): void;
}

/** A new stream token: a string, `{stream_token}` (the body of `POST /v1/generations/{id}/token`), or a promise. */
export type FreshToken = string | { stream_token: string };

export interface TokenbridgeOptions {
  /** `events_url` of the generation (for `stream`). */
  eventsUrl?: string;
  /** `ws_url` of the generation (for `socket`); a path or a ws(s):// URL. */
  wsUrl?: string;
  /** The generation's `stream_token`, sent as `?token=`. */
  token?: string;
  /** Start after this event id instead of from the beginning. */
  lastEventId?: string;
  /** The text received up to `lastEventId`. */
  text?: string;
  /** Failed reconnects in a row before giving up (default 20). */
  maxRetries?: number;
  /** Called when a reconnect finds the token expired; the stream then resumes where it was. A refreshed token reads only: `cancel()` keeps using the first one. */
  refreshToken?: (handle: TokenbridgeHandle) => FreshToken | Promise<FreshToken>;
  onToken?: (content: string, event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onReasoning?: (content: string, event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onToolCall?: (call: TokenbridgeToolCall, event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onRestart?: (event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onReset?: (text: string, event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onDone?: (event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onCancelled?: (event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
  onError?: (error: TokenbridgeError, handle: TokenbridgeHandle) => void;
  onStatus?: (status: TokenbridgeStatus, handle: TokenbridgeHandle) => void;
  /** Every event, once `text` and `lastEventId` include it: the place to persist them. */
  onEvent?: (event: TokenbridgeEvent, handle: TokenbridgeHandle) => void;
}

/** Reads a generation over Server-Sent Events, resuming after a dropped connection. */
export function stream(options: TokenbridgeOptions & { eventsUrl: string }): TokenbridgeHandle;

/** Reads a generation over WebSocket, reconnecting with `?last_event_id=` after an unexpected close. */
export function socket(options: TokenbridgeOptions & { wsUrl: string }): TokenbridgeHandle;

export const version: string;

/** The plain script defines these on window as `Tokenbridge`. */
export as namespace Tokenbridge;
