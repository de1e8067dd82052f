/*
 * The chat demo at /: submit a prompt, read the answer with tokenbridge.js over SSE or WebSocket, show time to
 * first token and tokens per second, and survive a reload mid-answer.
 *
 * Storage:
 * - localStorage "tokenbridge.key": the API key (also taken from a #key=... fragment, then removed from the URL);
 * - localStorage "tokenbridge.prefs": model, transport and pace of the last send;
 * - localStorage "tokenbridge.session": the session every answer of this browser belongs to; a tab that has no
 *   answer of its own (a new tab, a restored browser) asks the session for its newest generation and, when it
 *   is still running, reads it from the start;
 * - sessionStorage "tokenbridge.answer": the answer of this tab: generation id, events and ws URLs, stream
 *   token, last event id and the text up to it (always saved together), timings and status. On load, an
 *   answer that has not ended is resumed from its last event id with its text.
 */
(function () {
  "use strict";

  var KEY_STORE = "tokenbridge.key";
  var PREFS_STORE = "tokenbridge.prefs";
  var ANSWER_STORE = "tokenbridge.answer";
  var SESSION_STORE = "tokenbridge.session";
  var SAVE_EVERY_MS = 200;

  var $ = function (id) {
    return document.getElementById(id);
  };
  var form = $("form");
  var promptInput = $("prompt");
  var modelSelect = $("model");
  var keyInput = $("apikey");
  var sendButton = $("send");
  var stopButton = $("stop");
  var answerBox = $("answer");
  var statusBox = $("status");

  /** @type {Object|null} what sessionStorage holds about the current answer */
  var answer = null;
  /** @type {Object|null} the Tokenbridge handle reading it */
  var reader = null;
  var saveTimer = null;
  var tickTimer = null;
  var renderQueued = false;

  // -- storage -------------------------------------------------------------------------------------

  function load(storage, name) {
    try {
      var raw = storage.getItem(name);
      return raw ? JSON.parse(raw) : null;
    } catch (err) {
      return null;
    }
  }

  function store(storage, name, value) {
    try {
      if (value === null) storage.removeItem(name);
      else storage.setItem(name, typeof value === "string" ? value : JSON.stringify(value));
    } catch (err) {
      // Storage full or disabled: the demo still works, it just cannot resume after a reload.
    }
  }

  function saveAnswer() {
    if (saveTimer !== null) {
      clearTimeout(saveTimer);
      saveTimer = null;
    }
    if (answer) store(sessionStorage, ANSWER_STORE, answer);
  }

  function saveAnswerSoon() {
    // Coalesced: text and lastEventId always change together, so any snapshot is a valid resume point.
    if (saveTimer === null) saveTimer = setTimeout(saveAnswer, SAVE_EVERY_MS);
  }

  function savePrefs() {
    store(localStorage, PREFS_STORE, {
      model: modelSelect.value,
      transport: transport(),
      delay: $("delay").value,
      rate: $("rate").value,
    });
  }

  // -- form ----------------------------------------------------------------------------------------

  function transport() {
    var checked = form.querySelector('input[name="transport"]:checked');
    return checked ? checked.value : "sse";
  }

  function provider() {
    var option = modelSelect.options[modelSelect.selectedIndex];
    return option ? option.getAttribute("data-provider") : "";
  }

  function showProviderFields() {
    var current = provider();
    form.querySelectorAll("[data-for-provider]").forEach(function (el) {
      el.hidden = el.getAttribute("data-for-provider") !== current;
    });
  }

  /** This browser's session id (made on first use). */
  function sessionId() {
    var id = null;
    try {
      id = localStorage.getItem(SESSION_STORE);
    } catch (err) {
      id = null;
    }
    if (!id) {
      var bytes = new Uint8Array(12);
      crypto.getRandomValues(bytes);
      id = "demo-" + Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
      try {
        localStorage.setItem(SESSION_STORE, id);
      } catch (err) {
        // private mode: a session for this page only
      }
    }
    return id;
  }

  function authorized(url, method) {
    return fetch(url, { method: method || "GET", headers: { Authorization: "Bearer " + keyInput.value.trim() } }).then(
      function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error((body.error && body.error.message) || "request failed");
          return body;
        });
      }
    );
  }

  /** A new stream token for the current answer, minted with the API key (tokenbridge.js asks when one expired). */
  function refreshToken() {
    return authorized("/v1/generations/" + encodeURIComponent(answer.id) + "/token", "POST").then(function (body) {
      answer.token = body.stream_token;
      saveAnswer();
      return body.stream_token;
    });
  }

  /** A tab without an answer of its own: resume the session's newest generation if it is still running. */
  function resumeFromSession() {
    if (!keyInput.value.trim()) return;
    var session;
    try {
      session = localStorage.getItem(SESSION_STORE);
    } catch (err) {
      session = null;
    }
    if (!session) return;
    authorized("/v1/sessions/" + encodeURIComponent(session) + "/generations?limit=1")
      .then(function (listing) {
        var newest = listing.data && listing.data[0];
        if (!newest || (newest.status !== "queued" && newest.status !== "running") || reader) return undefined;
        return authorized("/v1/generations/" + encodeURIComponent(newest.id) + "/token", "POST").then(function (minted) {
          var base = "/v1/generations/" + encodeURIComponent(newest.id);
          answer = {
            id: newest.id,
            model: newest.model,
            prompt: "",
            transport: transport(),
            eventsUrl: base + "/events",
            wsUrl: base + "/ws",
            token: minted.stream_token,
            lastEventId: "",
            text: "",
            tokens: 0,
            startedAt: Date.now(),
            firstAt: 0,
            lastAt: 0,
            status: "streaming",
            message: "",
          };
          saveAnswer();
          follow(true);
          setStatus("streaming", "Found the session's running answer; reading it from the start…");
        });
      })
      .catch(function () {
        // Nothing to resume (no such session yet, or the key cannot read it): the page starts empty.
      });
  }

  function requestBody() {
    var body = { model: modelSelect.value, prompt: promptInput.value, session_id: sessionId() };
    var maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    if (provider() === "echo") {
      body.options = { delay_ms: Math.min(10000, Math.max(0, parseInt($("delay").value, 10) || 0)) };
    } else if (provider() === "synthetic") {
      body.options = { tokens_per_second: Number($("rate").value) || 40 };
      if (!body.max_tokens) body.max_tokens = 200;
    }
    return body;
  }

  function restorePrefs() {
    var prefs = load(localStorage, PREFS_STORE) || {};
    if (prefs.model && modelSelect.querySelector('option[value="' + CSS.escape(prefs.model) + '"]')) {
      modelSelect.value = prefs.model;
    }
    if (prefs.transport) {
      var radio = form.querySelector('input[name="transport"][value="' + CSS.escape(prefs.transport) + '"]');
      if (radio) radio.checked = true;
    }
    if (prefs.delay) $("delay").value = prefs.delay;
    if (prefs.rate) $("rate").value = prefs.rate;
    showProviderFields();
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
    answerBox.setAttribute("aria-busy", busy ? "true" : "false");
  }

  // -- display -------------------------------------------------------------------------------------

  function setStatus(state, text) {
    statusBox.setAttribute("data-state", state);
    statusBox.textContent = text;
  }

  function render() {
    renderQueued = false;
    if (!answer) return;
    if (answerBox.textContent !== answer.text) answerBox.textContent = answer.text;
    $("generation").textContent = answer.id || "";
    $("tokens").textContent = String(answer.tokens);
    $("transport-out").textContent = answer.transport === "ws" ? "WebSocket" : "SSE";
    var now = Date.now();
    if (answer.firstAt) {
      $("ttft").textContent = Math.round(answer.firstAt - answer.startedAt) + " ms";
    } else if (answer.status === "streaming") {
      $("ttft").textContent = Math.round(now - answer.startedAt) + " ms…";
    } else {
      $("ttft").textContent = "–";
    }
    var span = (answer.lastAt || 0) - (answer.firstAt || 0);
    $("rate-out").textContent = answer.tokens > 1 && span > 0 ? ((answer.tokens - 1) / (span / 1000)).toFixed(1) : "–";
  }

  function renderSoon() {
    if (renderQueued) return;
    renderQueued = true;
    // requestAnimationFrame does not run in a hidden tab: fall back to a timer there.
    if (document.hidden) setTimeout(render, 100);
    else requestAnimationFrame(render);
  }

  function startTicking() {
    stopTicking();
    tickTimer = setInterval(function () {
      if (answer && !answer.firstAt) render();
    }, 100);
  }

  function stopTicking() {
    if (tickTimer !== null) clearInterval(tickTimer);
    tickTimer = null;
  }

  function streamingText() {
    return "Streaming " + answer.id + " over " + (answer.transport === "ws" ? "WebSocket" : "SSE") + "…";
  }

  // -- reading -------------------------------------------------------------------------------------

  function finish(state, text, status) {
    stopTicking();
    if (answer) {
      answer.status = status;
      answer.message = text;
      saveAnswer();
    }
    reader = null;
    setBusy(false);
    render();
    setStatus(state, text);
  }

  /** Reads `answer` from its last event id (or from the start), with the text it had up to there. */
  function follow(resumed) {
    var options = {
      token: answer.token,
      refreshToken: refreshToken,
      lastEventId: answer.lastEventId || undefined,
      text: answer.text,
      onEvent: function (event, handle) {
        answer.lastEventId = handle.lastEventId;
        answer.text = handle.text;
        saveAnswerSoon();
        renderSoon();
      },
      onToken: function () {
        var now = Date.now();
        if (!answer.firstAt) answer.firstAt = now;
        answer.lastAt = now;
        answer.tokens += 1;
        if (statusBox.getAttribute("data-state") !== "streaming") setStatus("streaming", streamingText());
      },
      onRestart: function (event) {
        answer.tokens = 0;
        setStatus("streaming", "The generation restarted (" + (event.data.reason || "worker lost") + "); reading it again…");
      },
      onReset: function () {
        setStatus("streaming", "Caught up from the stored text; streaming…");
      },
      onDone: function (event) {
        finish("done", "Done (" + (event.data.finish_reason || "stop") + ").", "done");
      },
      onCancelled: function () {
        finish("stopped", "Stopped: the generation was cancelled.", "cancelled");
      },
      onError: function (error) {
        if (error.fatal) {
          finish("failed", "Failed: " + error.message + " (" + error.code + ")", "failed");
        } else if (error.code !== "already_finished") {
          setStatus("streaming", error.message);
        }
      },
      onStatus: function (status) {
        if (status === "reconnecting") setStatus("reconnecting", "Connection lost; resuming from the last event…");
        else if (status === "open" && statusBox.getAttribute("data-state") === "reconnecting") {
          setStatus("streaming", streamingText());
        } else if (status === "ended") {
          outcome();
        }
      },
    };
    if (answer.transport === "ws") {
      options.wsUrl = answer.wsUrl;
      reader = Tokenbridge.socket(options);
    } else {
      options.eventsUrl = answer.eventsUrl;
      reader = Tokenbridge.stream(options);
    }
    setBusy(true);
    startTicking();
    render();
    if (resumed) {
      setStatus(
        "streaming",
        answer.lastEventId ? "Resumed after a reload from event " + answer.lastEventId + "…" : "Resumed after a reload…"
      );
    } else {
      setStatus("streaming", streamingText());
    }
  }

  /** The generation ended before the reader caught up (it was already at the end): ask for the record. */
  function outcome() {
    var url = answer.eventsUrl.replace(/\/events$/, "") + "?token=" + encodeURIComponent(answer.token);
    fetch(url, { cache: "no-store" })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error((body.error && body.error.message) || "request failed");
          return body;
        });
      })
      .then(function (record) {
        answer.text = record.text || answer.text;
        if (record.status === "completed") finish("done", "Done (" + (record.finish_reason || "stop") + ").", "done");
        else if (record.status === "cancelled") finish("stopped", "Stopped: the generation was cancelled.", "cancelled");
        else finish("failed", "Failed: " + ((record.error && record.error.message) || record.status), "failed");
      })
      .catch(function (err) {
        finish("failed", "Failed: " + err.message, "failed");
      });
  }

  function send(event) {
    event.preventDefault();
    if (reader) return;
    if (!promptInput.value.trim()) {
      setStatus("failed", "Type a prompt first.");
      promptInput.focus();
      return;
    }
    savePrefs();
    var chosen = transport();
    var startedAt = Date.now();
    answer = null;
    store(sessionStorage, ANSWER_STORE, null);
    answerBox.textContent = "";
    ["generation", "transport-out"].forEach(function (id) {
      $(id).textContent = "";
    });
    ["ttft", "rate-out"].forEach(function (id) {
      $(id).textContent = "–";
    });
    $("tokens").textContent = "0";
    setBusy(true);
    stopButton.disabled = true;
    setStatus("submitting", "Submitting…");
    fetch("/v1/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + keyInput.value.trim() },
      body: JSON.stringify(requestBody()),
    })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            return {};
          })
          .then(function (body) {
            if (!response.ok) {
              var err = new Error((body.error && body.error.message) || "The request failed (" + response.status + ").");
              err.status = response.status;
              throw err;
            }
            return body;
          });
      })
      .then(function (created) {
        answer = {
          id: created.id,
          model: created.model,
          prompt: promptInput.value,
          transport: chosen,
          eventsUrl: created.events_url,
          wsUrl: created.ws_url,
          token: created.stream_token,
          lastEventId: "",
          text: "",
          tokens: 0,
          startedAt: startedAt,
          firstAt: 0,
          lastAt: 0,
          status: "streaming",
          message: "",
        };
        saveAnswer();
        follow(false);
      })
      .catch(function (err) {
        setBusy(false);
        setStatus("failed", err.message);
        if (err.status === 401 || err.status === 403) keyInput.focus();
      });
  }

  function stop() {
    if (!reader) return;
    stopButton.disabled = true;
    setStatus("stopping", "Stopping…");
    reader.cancel().catch(function (err) {
      if (err.code === "already_finished") return; // its terminal event is on the way
      stopButton.disabled = false;
      setStatus("failed", "Could not stop: " + err.message);
    });
  }

  // -- start ---------------------------------------------------------------------------------------

  var fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromHash) {
    store(localStorage, KEY_STORE, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  try {
    keyInput.value = localStorage.getItem(KEY_STORE) || "";
  } catch (err) {
    keyInput.value = "";
  }
  keyInput.addEventListener("change", function () {
    store(localStorage, KEY_STORE, keyInput.value.trim());
    try {
      localStorage.removeItem(SESSION_STORE); // a session belongs to its key's owner: start a new one
    } catch (err) {
      // nothing stored
    }
  });
  modelSelect.addEventListener("change", function () {
    showProviderFields();
    savePrefs();
  });
  form.querySelectorAll('input[name="transport"]').forEach(function (radio) {
    radio.addEventListener("change", savePrefs);
  });
  form.addEventListener("submit", send);
  stopButton.addEventListener("click", stop);
  promptInput.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  // Save the latest text and id before the page goes away (a reload mid-answer resumes from them).
  window.addEventListener("pagehide", saveAnswer);
  restorePrefs();

  answer = load(sessionStorage, ANSWER_STORE);
  if (answer && answer.id && answer.token) {
    if (answer.prompt) promptInput.value = answer.prompt;
    if (answer.status === "streaming") {
      follow(true);
    } else {
      render();
      var states = { done: "done", cancelled: "stopped", failed: "failed" };
      setStatus(states[answer.status] || "idle", answer.message || "");
    }
  } else {
    answer = null;
    resumeFromSession();
  }
})();
