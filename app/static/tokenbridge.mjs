/**
 * tokenbridge.mjs: the browser client for tokenbridge generation streams as an ES module. The same code as
 * tokenbridge.js (the plain script that defines window.Tokenbridge), generated from it by clients/generate.py;
 * types in tokenbridge.d.ts.
 *
 *     import { stream, socket } from "./tokenbridge.mjs";   // your copy, or your bundler's import
 *     const reader = stream({
 *       eventsUrl: "https://tokenbridge.example.com" + created.events_url,   // from POST /v1/generations
 *       token: created.stream_token,
 *       onToken: (content, event, handle) => { answer.textContent = handle.text; },
 *     });
 *
 * Everything tokenbridge.js documents holds here.
 */
const global = globalThis;

/**
 * One event of a generation, as both transports deliver it.
 * @typedef {Object} TokenbridgeEvent
 * @property {string} event  `token`, `restart`, `reset`, `done`, `error` or `cancelled`.
 * @property {string} id  Stream entry id: the cursor to resume after this event.
 * @property {Object<string, *>} data  The event's JSON data (`seq`, `content`, `finish_reason`, ...).
 */

/**
 * Something that went wrong: the generation's `error` event, a refused request or a lost connection.
 * @typedef {Object} TokenbridgeError
 * @property {string} code  snake_case code: the event's or the HTTP error's, or `connection_lost`.
 * @property {string} message  A human sentence.
 * @property {boolean} terminal  True for the generation's own `error` event.
 * @property {boolean} fatal  True when the reader has stopped (no more callbacks follow).
 * @property {number} [status]  HTTP status of a refused request.
 */

/**
 * `connecting`, `open`, `reconnecting`; then one final status: `done`, `error`, `cancelled`, `ended`
 * (the generation ended at or before `lastEventId`: GET it for its outcome) or `closed` (by `close()`).
 * @typedef {("connecting"|"open"|"reconnecting"|"done"|"error"|"cancelled"|"ended"|"closed")} TokenbridgeStatus
 */

/**
 * A tool call of the model, joined from its `tool_call` events.
 * @typedef {Object} TokenbridgeToolCall
 * @property {string} id
 * @property {string} name
 * @property {string} arguments  JSON text of the arguments; complete once the generation is done.
 */

/**
 * @typedef {Object} TokenbridgeHandle
 * @property {string} text  The answer so far.
 * @property {string} reasoning  The model's reasoning so far (`reasoning` events).
 * @property {TokenbridgeToolCall[]} toolCalls  The model's tool calls so far, by index (`tool_call` events).
 * @property {string} lastEventId  Id of the last event received ("" before the first).
 * @property {TokenbridgeStatus} status
 * @property {boolean} finished  True once the reader has stopped.
 * @property {string} transport  `sse` or `ws`.
 * @property {function(): Promise<void>} cancel  Asks the server to cancel the generation; the stream then
 *   ends with a `cancelled` event. Rejects with an Error carrying `code` and `status` when refused.
 * @property {function(): void} close  Stops reading; no callback runs afterwards.
 */

/**
 * Options of `Tokenbridge.stream` and `Tokenbridge.socket`. Every callback gets the handle last.
 * @typedef {Object} TokenbridgeOptions
 * @property {string} [eventsUrl]  `events_url` of the generation (for `stream`).
 * @property {string} [wsUrl]  `ws_url` of the generation (for `socket`); a path or a ws(s):// URL.
 * @property {string} [token]  The generation's `stream_token`, sent as `?token=`.
 * @property {string} [lastEventId]  Start after this event id instead of from the beginning.
 * @property {string} [text]  The text received up to `lastEventId`.
 * @property {number} [maxRetries=20]  Failed reconnects in a row before giving up.
 * @property {function(TokenbridgeHandle): (string|{stream_token: string}|Promise<string|{stream_token: string}>)} [refreshToken]
 *   Returns a new stream token (your backend asks `POST /v1/generations/{id}/token` with its API key).
 *   Called when a reconnect finds the token expired; the stream then resumes where it was. A refreshed token
 *   reads only: `cancel()` keeps using the first one.
 * @property {function(string, TokenbridgeEvent, TokenbridgeHandle): void} [onToken]  A token's content.
 * @property {function(string, TokenbridgeEvent, TokenbridgeHandle): void} [onReasoning]  A piece of the model's
 *   reasoning (`handle.reasoning` holds all of it).
 * @property {function(TokenbridgeToolCall, TokenbridgeEvent, TokenbridgeHandle): void} [onToolCall]  A piece of a
 *   tool call, joined into `handle.toolCalls[index]` (whose `arguments` grow until the generation ends).
 * @property {function(TokenbridgeEvent, TokenbridgeHandle): void} [onRestart]  The text was discarded.
 * @property {function(string, TokenbridgeEvent, TokenbridgeHandle): void} [onReset]  The text was replaced.
 * @property {function(TokenbridgeEvent, TokenbridgeHandle): void} [onDone]
 * @property {function(TokenbridgeEvent, TokenbridgeHandle): void} [onCancelled]
 * @property {function(TokenbridgeError, TokenbridgeHandle): void} [onError]
 * @property {function(TokenbridgeStatus, TokenbridgeHandle): void} [onStatus]
 * @property {function(TokenbridgeEvent, TokenbridgeHandle): void} [onEvent]  Every event, once `text` and
 *   `lastEventId` include it and before its own callback: the place to persist them.
 */

var TERMINAL = { done: "done", error: "error", cancelled: "cancelled" };
// Answers that will not change on retry: stop instead of reconnecting.
var FATAL_STATUSES = [400, 401, 403, 404, 405, 409, 410, 413, 415, 422];
var MAX_BACKOFF_MS = 10000;

function call(fn, args) {
  if (typeof fn !== "function") return;
  try {
    fn.apply(null, args);
  } catch (err) {
    // A failing callback must not stop the reader.
    if (global.console) global.console.error("tokenbridge callback failed:", err);
  }
}

/** An absolute URL with the given query parameters set (undefined and "" are left out). */
function withQuery(url, params) {
  var u = new URL(url, global.location.href);
  Object.keys(params).forEach(function (name) {
    if (params[name] !== undefined && params[name] !== null && params[name] !== "") {
      u.searchParams.set(name, String(params[name]));
    } else {
      u.searchParams.delete(name);
    }
  });
  return u.href;
}

/** The generation's own URL (`/v1/generations/{id}`) from its events or ws URL. */
function generationUrl(url) {
  var u = new URL(url, global.location.href);
  if (u.protocol === "ws:") u.protocol = "http:";
  if (u.protocol === "wss:") u.protocol = "https:";
  u.pathname = u.pathname.replace(/\/(events|ws)\/?$/, "");
  u.search = "";
  return u.href;
}

function backoffMs(attempt, retryAfterS) {
  if (retryAfterS > 0) return Math.min(retryAfterS * 1000, 60000);
  return Math.min(500 * Math.pow(2, Math.max(0, attempt - 1)), MAX_BACKOFF_MS);
}

/** Reads an error body (`{"error": {"code", "message"}}`) into a TokenbridgeError. */
function httpError(response, body) {
  var error = (body && body.error) || {};
  return {
    code: error.code || "http_" + response.status,
    message: error.message || "The server answered " + response.status + ".",
    terminal: false,
    fatal: true,
    status: response.status,
  };
}

function readJson(response) {
  return response.json().catch(function () {
    return null;
  });
}

function tokenExpired(response, body) {
  return response.status === 401 && !!body && !!body.error && body.error.code === "token_expired";
}

/** Asks `opts.refreshToken` for a new stream token; resolves true once `opts.token` holds it. */
function refreshToken(opts, handle) {
  if (typeof opts.refreshToken !== "function") return Promise.resolve(false);
  return Promise.resolve()
    .then(function () {
      return opts.refreshToken(handle);
    })
    .then(
      function (fresh) {
        var token = fresh && typeof fresh === "object" ? fresh.stream_token : fresh;
        if (typeof token !== "string" || !token) return false;
        opts.token = token;
        return true;
      },
      function (err) {
        if (global.console) global.console.error("tokenbridge refreshToken failed:", err);
        return false;
      }
    );
}

/**
 * POST /v1/generations/{id}/cancel with the generation's first stream token (the one POST /v1/generations
 * returned): a refreshed token only reads. Once the first one has expired, the app's backend cancels with its key.
 */
function cancelOverHttp(url, token) {
  return global.fetch(withQuery(generationUrl(url) + "/cancel", { token: token }), { method: "POST" }).then(
    function (response) {
      if (response.ok) return undefined;
      return readJson(response).then(function (body) {
        throw cancelError(response, body);
      });
    }
  );
}

function cancelError(response, body) {
  var info = httpError(response, body);
  var err = new Error(info.message);
  err.code = info.code;
  err.status = info.status;
  return err;
}

/**
 * After a refusal: when it says the token expired and no token was refreshed since the last event, ask for a
 * new one and call `retry`; resolves false when the refusal stands.
 */
function retryWithFreshToken(reader, opts, response, body, retry) {
  if (!tokenExpired(response, body) || reader.refreshed) return Promise.resolve(false);
  reader.refreshed = true;
  return refreshToken(opts, reader.handle).then(function (ok) {
    if (ok) retry();
    return ok;
  });
}

/**
 * The state both transports share: the handle, and applying one event to it.
 * @param {TokenbridgeOptions} opts
 * @param {string} transport
 */
function createReader(opts, transport) {
  var lastSeq = -1;
  var timer = null;
  var handle = {
    text: typeof opts.text === "string" ? opts.text : "",
    reasoning: "",
    toolCalls: [],
    lastEventId: opts.lastEventId || "",
    status: "connecting",
    finished: false,
    transport: transport,
  };
  var reader = {
    handle: handle,
    maxRetries: typeof opts.maxRetries === "number" ? opts.maxRetries : 20,
    retries: 0,
    refreshed: false, // a token was refreshed since the last event

    setStatus: function (status) {
      if (handle.status === status) return;
      handle.status = status;
      call(opts.onStatus, [status, handle]);
    },

    /** Stops for good with a final status; returns false when already stopped. */
    finish: function (status) {
      if (handle.finished) return false;
      handle.finished = true;
      reader.clearTimer();
      reader.setStatus(status);
      return true;
    },

    /** Stops without a callback: the caller asked for it. */
    close: function () {
      if (handle.finished) return;
      handle.finished = true;
      handle.status = "closed";
      reader.clearTimer();
    },

    fail: function (error) {
      if (reader.finish("error")) call(opts.onError, [error, handle]);
    },

    later: function (fn, ms) {
      reader.clearTimer();
      timer = global.setTimeout(function () {
        timer = null;
        if (!handle.finished) fn();
      }, ms);
    },

    clearTimer: function () {
      if (timer !== null) global.clearTimeout(timer);
      timer = null;
    },

    /** One more failed connection in a row: true when another try is allowed. */
    retryAllowed: function () {
      reader.retries += 1;
      if (reader.retries <= reader.maxRetries) return true;
      reader.fail({
        code: "connection_lost",
        message: "The stream could not be resumed after " + reader.maxRetries + " tries.",
        terminal: false,
        fatal: true,
      });
      return false;
    },

    /**
     * Applies one event; returns true when it ends the generation.
     * @param {TokenbridgeEvent} event
     */
    apply: function (event) {
      if (handle.finished) return true;
      var data = event.data || {};
      if (typeof data.seq === "number") {
        if (data.seq <= lastSeq) return false; // already applied
        lastSeq = data.seq;
      }
      reader.retries = 0;
      reader.refreshed = false;
      if (event.id) handle.lastEventId = event.id;
      if (event.event === "token") {
        handle.text += typeof data.content === "string" ? data.content : "";
      } else if (event.event === "restart") {
        handle.text = "";
        handle.reasoning = "";
        handle.toolCalls = [];
      } else if (event.event === "reasoning") {
        handle.reasoning += typeof data.content === "string" ? data.content : "";
      } else if (event.event === "tool_call") {
        var index = typeof data.index === "number" ? data.index : 0;
        var toolCall = handle.toolCalls[index] || (handle.toolCalls[index] = { id: "", name: "", arguments: "" });
        if (typeof data.id === "string") toolCall.id = data.id;
        if (typeof data.name === "string") toolCall.name = data.name;
        toolCall.arguments += typeof data.arguments === "string" ? data.arguments : "";
      } else if (event.event === "reset") {
        handle.text = typeof data.text === "string" ? data.text : "";
        if (typeof data.next_seq === "number") lastSeq = data.next_seq - 1;
      }
      call(opts.onEvent, [event, handle]);
      switch (event.event) {
        case "token":
          call(opts.onToken, [typeof data.content === "string" ? data.content : "", event, handle]);
          return false;
        case "reasoning":
          call(opts.onReasoning, [typeof data.content === "string" ? data.content : "", event, handle]);
          return false;
        case "tool_call":
          call(opts.onToolCall, [handle.toolCalls[typeof data.index === "number" ? data.index : 0], event, handle]);
          return false;
        case "restart":
          call(opts.onRestart, [event, handle]);
          return false;
        case "reset":
          call(opts.onReset, [handle.text, event, handle]);
          return false;
        case "done":
          reader.finish(TERMINAL.done);
          call(opts.onDone, [event, handle]);
          return true;
        case "cancelled":
          reader.finish(TERMINAL.cancelled);
          call(opts.onCancelled, [event, handle]);
          return true;
        case "error":
          reader.finish(TERMINAL.error);
          call(opts.onError, [
            {
              code: data.code || "error",
              message: data.message || "The generation failed.",
              terminal: true,
              fatal: true,
            },
            handle,
          ]);
          return true;
        default:
          return false; // an event this client does not know: its id still counts as the cursor
      }
    },
  };
  return reader;
}

/**
 * Reads a generation over Server-Sent Events (EventSource), resuming after a dropped connection.
 * @param {TokenbridgeOptions} opts
 * @returns {TokenbridgeHandle}
 */
function stream(opts) {
  if (!opts || !opts.eventsUrl) throw new TypeError("Tokenbridge.stream needs eventsUrl");
  var reader = createReader(opts, "sse");
  var handle = reader.handle;
  var source = null;
  var cancelToken = opts.token; // the first token: a refreshed one only reads

  function url() {
    // EventSource sends Last-Event-ID itself on its own reconnects; the server prefers that header.
    return withQuery(opts.eventsUrl, { token: opts.token, last_event_id: handle.lastEventId });
  }

  function onMessage(message) {
    var data;
    try {
      data = JSON.parse(message.data);
    } catch (err) {
      return;
    }
    var terminal = reader.apply({ event: message.type, id: message.lastEventId, data: data });
    if (terminal) shut();
  }

  function shut() {
    if (source) {
      source.close();
      source = null;
    }
  }

  function open() {
    shut();
    reader.setStatus(reader.retries ? "reconnecting" : "connecting");
    source = new global.EventSource(url());
    source.onopen = function () {
      reader.retries = 0;
      reader.setStatus("open");
    };
    ["token", "reasoning", "tool_call", "restart", "reset", "done", "cancelled"].forEach(function (name) {
      source.addEventListener(name, onMessage);
    });
    source.addEventListener("error", function (event) {
      if (typeof event.data === "string") {
        onMessage(event); // the generation's own `error` event
        return;
      }
      if (handle.finished || !source) return;
      if (source.readyState === global.EventSource.CONNECTING) {
        // EventSource reconnects by itself (the response ended early, or the network dropped).
        if (reader.retryAllowed()) reader.setStatus("reconnecting");
        else shut();
        return;
      }
      // CLOSED: the server refused (non-2xx, or 204). EventSource does not say why: ask once.
      shut();
      probe();
    });
  }

  function probe() {
    var controller = typeof global.AbortController === "function" ? new global.AbortController() : null;
    global
      .fetch(url(), {
        headers: { Accept: "text/event-stream" },
        cache: "no-store",
        signal: controller ? controller.signal : undefined,
      })
      .then(
        function (response) {
          if (response.status === 204) {
            reader.finish("ended");
            return undefined;
          }
          if (response.ok) {
            if (controller) controller.abort();
            if (reader.retryAllowed()) reader.later(open, backoffMs(reader.retries, 0));
            return undefined;
          }
          return readJson(response).then(function (body) {
            return retryWithFreshToken(reader, opts, response, body, open).then(function (retried) {
              if (!retried) refused(response, body);
            });
          });
        },
        function () {
          if (reader.retryAllowed()) {
            reader.setStatus("reconnecting");
            reader.later(open, backoffMs(reader.retries, 0));
          }
        }
      );
  }

  function refused(response, body) {
    if (FATAL_STATUSES.indexOf(response.status) >= 0) {
      reader.fail(httpError(response, body));
    } else if (reader.retryAllowed()) {
      reader.setStatus("reconnecting");
      reader.later(open, backoffMs(reader.retries, Number(response.headers.get("Retry-After")) || 0));
    }
  }

  handle.cancel = function () {
    return cancelOverHttp(opts.eventsUrl, cancelToken);
  };
  handle.close = function () {
    shut();
    reader.close();
  };
  open();
  return handle;
}

/**
 * Reads a generation over WebSocket, reconnecting with `?last_event_id=` after an unexpected close.
 * `cancel()` sends `{"type": "cancel"}` on the socket (or POSTs the cancel while it reconnects).
 * @param {TokenbridgeOptions} opts
 * @returns {TokenbridgeHandle}
 */
function socket(opts) {
  if (!opts || !opts.wsUrl) throw new TypeError("Tokenbridge.socket needs wsUrl");
  var reader = createReader(opts, "ws");
  var handle = reader.handle;
  var ws = null;
  var cancelToken = opts.token; // the first token: a refreshed one only reads

  function url() {
    var u = new URL(withQuery(opts.wsUrl, { token: opts.token, last_event_id: handle.lastEventId }));
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    return u.href;
  }

  function shut() {
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === global.WebSocket.CONNECTING || ws.readyState === global.WebSocket.OPEN) {
        ws.close(1000);
      }
      ws = null;
    }
  }

  function connect() {
    shut();
    reader.setStatus(reader.retries ? "reconnecting" : "connecting");
    var opened = false;
    var current = new global.WebSocket(url());
    ws = current;
    current.onopen = function () {
      opened = true;
      reader.retries = 0;
      reader.setStatus("open");
    };
    current.onmessage = function (message) {
      var frame;
      try {
        frame = JSON.parse(message.data);
      } catch (err) {
        return;
      }
      if (frame && typeof frame.event === "string") {
        if (reader.apply({ event: frame.event, id: frame.id || "", data: frame.data || {} })) shut();
      } else if (frame && frame.type === "error") {
        // The server refused a message of ours (a cancel of a finished generation, for one).
        var error = frame.error || {};
        call(opts.onError, [
          { code: error.code || "error", message: error.message || "", terminal: false, fatal: false },
          handle,
        ]);
      }
    };
    current.onclose = function (event) {
      if (ws !== current) return;
      ws = null;
      if (handle.finished) return;
      if (event.code === 1000) {
        // Closed normally before a terminal event: the generation ended at or before our cursor.
        reader.finish("ended");
        return;
      }
      if (!reader.retryAllowed()) return;
      reader.setStatus("reconnecting");
      if (opened) {
        reader.later(connect, event.code === 1012 ? 0 : backoffMs(reader.retries, 0));
      } else {
        probe(); // refused before the upgrade: a browser cannot see why
      }
    };
  }

  function probe() {
    // The WebSocket route refuses before the upgrade on the same checks as GET /v1/generations/{id}.
    global.fetch(withQuery(generationUrl(opts.wsUrl), { token: opts.token }), { cache: "no-store" }).then(
      function (response) {
        if (FATAL_STATUSES.indexOf(response.status) >= 0) {
          return readJson(response).then(function (body) {
            return retryWithFreshToken(reader, opts, response, body, connect).then(function (retried) {
              if (!retried) reader.fail(httpError(response, body));
            });
          });
        }
        reader.later(connect, backoffMs(reader.retries, Number(response.headers.get("Retry-After")) || 0));
        return undefined;
      },
      function () {
        reader.later(connect, backoffMs(reader.retries, 0));
      }
    );
  }

  handle.cancel = function () {
    // Over the socket while it was opened with the first token (a refreshed one only reads), else over HTTP.
    if (ws && ws.readyState === global.WebSocket.OPEN && opts.token === cancelToken) {
      ws.send(JSON.stringify({ type: "cancel" }));
      return Promise.resolve();
    }
    return cancelOverHttp(opts.wsUrl, cancelToken);
  };
  handle.close = function () {
    shut();
    reader.close();
  };
  connect();
  return handle;
}

export { socket, stream };
export const version = "1";
