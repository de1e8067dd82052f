/*
 * The operations dashboard at /dashboard. Every 2 s it reads, from the same origin:
 * - /readyz: overall status, Redis latency, consumers (alive, pending, lag, oldest pending), Celery workers;
 * - /metrics (Prometheus text, parsed here): open streams, events and tokens sent per second, and delivery
 *   latency percentiles estimated from the buckets of tokenbridge_delivery_latency_seconds;
 * - /v1/stats (API key from localStorage "tokenbridge.key"): per model generations, tokens, TTFT, tokens/s;
 * - /dashboard/data (API key): the latest dead letters.
 * The saved API key goes to /readyz and /metrics too: with OPS_TOKEN set, an admin key reads them whole (another
 * key gets the bare status of /readyz, and no /metrics).
 * It keeps the last 5 minutes of rates and latencies in memory and draws them as SVG line charts.
 */
(function () {
  "use strict";

  var REFRESH_MS = 2000;
  var WINDOW_MS = 5 * 60 * 1000;
  var MIN_SPAN_MS = 30 * 1000;
  var FETCH_TIMEOUT_MS = 5000;
  var MAX_ERRORS = 50;
  var KEY_STORE = "tokenbridge.key";
  var SVG_NS = "http://www.w3.org/2000/svg";

  var $ = function (id) {
    return document.getElementById(id);
  };

  /** @type {{t: number, tokens: ?number, events: ?number, p50: ?number, p99: ?number}[]} */
  var samples = [];
  var previousScrape = null;
  var previousFailed = null;
  var seenDeadLetters = {};
  var activeProblems = {};
  var errors = [];
  var paused = false;
  var timer = null;
  var inFlight = false;

  // -- helpers -------------------------------------------------------------------------------------

  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORE) || "";
    } catch (err) {
      return "";
    }
  }

  function get(url, headers) {
    var controller = new AbortController();
    var timeout = setTimeout(function () {
      controller.abort();
    }, FETCH_TIMEOUT_MS);
    return fetch(url, { cache: "no-store", headers: headers || {}, signal: controller.signal }).finally(function () {
      clearTimeout(timeout);
    });
  }

  function keyHeaders() {
    var key = apiKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function readJson(response) {
    return response.json().catch(function () {
      return {};
    });
  }

  function text(id, value) {
    $(id).textContent = value;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || isNaN(value)) return "–";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function fmtMs(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    var ms = seconds * 1000;
    return fmt(ms, ms < 10 ? 2 : ms < 100 ? 1 : 0) + " ms";
  }

  function clock(date) {
    return date.toLocaleTimeString(undefined, { hour12: false });
  }

  function setStatusBadge(el, status) {
    el.setAttribute("data-status", status);
    el.textContent = status;
  }

  // -- recent errors -------------------------------------------------------------------------------

  function addError(source, message, at) {
    errors.push({ at: at || Date.now(), source: source, message: message });
    errors.sort(function (a, b) {
      return b.at - a.at;
    });
    errors.length = Math.min(errors.length, MAX_ERRORS);
    renderErrors();
  }

  /** Logs each message of `source` when it appears (not again while it lasts). */
  function reportActive(source, messages) {
    var previous = activeProblems[source] || {};
    var current = {};
    messages.forEach(function (message) {
      current[message] = true;
      if (!previous[message]) addError(source, message);
    });
    activeProblems[source] = current;
  }

  function renderErrors() {
    var list = $("errors");
    list.textContent = "";
    errors.forEach(function (error) {
      var item = document.createElement("li");
      var time = document.createElement("time");
      var at = new Date(error.at);
      time.dateTime = at.toISOString();
      time.textContent = clock(at);
      var source = document.createElement("span");
      source.className = "source";
      source.textContent = error.source;
      var message = document.createElement("span");
      message.textContent = error.message;
      item.append(time, source, message);
      list.appendChild(item);
    });
    $("errors-empty").hidden = errors.length > 0;
  }

  // -- /readyz -------------------------------------------------------------------------------------

  function loadReadyz() {
    return get("/readyz", keyHeaders())
      .then(function (response) {
        return readJson(response);
      })
      .then(
        function (body) {
          var checks = body.checks || {};
          var status = body.status || "unknown";
          setStatusBadge($("overall"), status);
          setStatusBadge($("readyz-status"), status);
          var redisCheck = checks.redis || {};
          var consumers = checks.consumers || {};
          var celery = checks.celery || {};
          text("redis-latency", redisCheck.latency_ms !== undefined ? fmt(redisCheck.latency_ms, 2) + " ms" : "–");
          text("consumers-alive", fmt(consumers.alive, 0));
          text("consumers-pending", fmt(consumers.pending_generations, 0));
          text("consumers-lag", consumers.lag === null ? "n/a" : fmt(consumers.lag, 0));
          text("consumers-oldest", consumers.oldest_pending_s !== undefined ? fmt(consumers.oldest_pending_s, 1) + " s" : "–");
          text("celery-workers", fmt(celery.workers, 0));

          var list = $("checks");
          list.textContent = "";
          var problems = [];
          Object.keys(checks).forEach(function (name) {
            var check = checks[name] || {};
            var item = document.createElement("li");
            var label = document.createElement("span");
            label.textContent = name;
            var badge = document.createElement("span");
            badge.className = "badge";
            setStatusBadge(badge, check.status || "unknown");
            item.append(label, badge);
            list.appendChild(item);
            if (check.status && check.status !== "healthy") {
              var detail = (check.problems && check.problems.join("; ")) || check.error || "status " + check.status;
              problems.push(name + ": " + detail);
            }
          });
          var problemList = $("problems");
          problemList.textContent = "";
          problems.forEach(function (problem) {
            var item = document.createElement("li");
            item.textContent = problem;
            problemList.appendChild(item);
          });
          reportActive("readyz", problems);
          reportActive("web", []);
        },
        function (err) {
          setStatusBadge($("overall"), "unreachable");
          setStatusBadge($("readyz-status"), "unreachable");
          reportActive("web", ["/readyz did not answer: " + err.message]);
        }
      );
  }

  // -- /metrics ------------------------------------------------------------------------------------

  function parseValue(raw) {
    if (raw === "+Inf") return Infinity;
    if (raw === "-Inf") return -Infinity;
    return parseFloat(raw);
  }

  /** Prometheus text exposition → [{name, labels, value}] (comments and HELP/TYPE lines skipped). */
  function parseMetrics(body) {
    var result = [];
    var line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    var label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    body.split("\n").forEach(function (raw) {
      if (!raw || raw.charAt(0) === "#") return;
      var match = line.exec(raw);
      if (!match) return;
      var labels = {};
      var pair;
      label.lastIndex = 0;
      while ((pair = label.exec(match[2] || "")) !== null) labels[pair[1]] = pair[2];
      result.push({ name: match[1], labels: labels, value: parseValue(match[3]) });
    });
    return result;
  }

  function total(metrics, name) {
    var found = false;
    var sum = 0;
    metrics.forEach(function (m) {
      if (m.name === name) {
        found = true;
        sum += m.value;
      }
    });
    return found ? sum : null;
  }

  /** Cumulative bucket counts summed over every label but `le`, sorted by bound: [[le, count], ...]. */
  function buckets(metrics, name) {
    var byBound = {};
    metrics.forEach(function (m) {
      if (m.name !== name || m.labels.le === undefined) return;
      byBound[m.labels.le] = (byBound[m.labels.le] || 0) + m.value;
    });
    return Object.keys(byBound)
      .map(function (le) {
        return [parseValue(le), byBound[le]];
      })
      .sort(function (a, b) {
        return a[0] - b[0];
      });
  }

  /**
   * The q-quantile of cumulative buckets, interpolated linearly inside the bucket like Prometheus'
   * histogram_quantile; null without observations. Past the last finite bound, that bound is the answer.
   */
  function quantile(q, cumulative) {
    if (!cumulative.length) return null;
    var count = cumulative[cumulative.length - 1][1];
    if (!(count > 0)) return null;
    var rank = q * count;
    for (var i = 0; i < cumulative.length; i++) {
      if (cumulative[i][1] >= rank) {
        var upper = cumulative[i][0];
        var lower = i > 0 ? cumulative[i - 1][0] : 0;
        var below = i > 0 ? cumulative[i - 1][1] : 0;
        if (upper === Infinity) return lower;
        var inBucket = cumulative[i][1] - below;
        return inBucket > 0 ? lower + ((upper - lower) * (rank - below)) / inBucket : upper;
      }
    }
    return null;
  }

  function delta(current, previous) {
    if (current === null || previous === null || current < previous) return null; // missing, or a restart
    return current - previous;
  }

  function loadMetrics() {
    return get("/metrics", keyHeaders())
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          throw new Error("it needs an API key with the admin scope (OPS_TOKEN is set)");
        }
        if (!response.ok) throw new Error("/metrics answered " + response.status);
        return response.text();
      })
      .then(
        function (body) {
          var metrics = parseMetrics(body);
          var scrape = {
            t: Date.now(),
            events: total(metrics, "tokenbridge_events_sent_total"),
            tokens: total(metrics, "tokenbridge_delivery_latency_seconds_count"),
            buckets: buckets(metrics, "tokenbridge_delivery_latency_seconds_bucket"),
          };
          var open = { sse: 0, ws: 0 };
          metrics.forEach(function (m) {
            if (m.name === "tokenbridge_open_streams") open[m.labels.transport] = (open[m.labels.transport] || 0) + m.value;
          });
          text("open-streams", fmt(open.sse + open.ws, 0));
          $("open-streams").title = open.sse + " SSE, " + open.ws + " WebSocket";

          var sample = { t: scrape.t, tokens: null, events: null, p50: null, p99: null };
          var recent = null;
          if (previousScrape) {
            var seconds = (scrape.t - previousScrape.t) / 1000;
            var events = delta(scrape.events, previousScrape.events);
            var tokens = delta(scrape.tokens, previousScrape.tokens);
            sample.events = events === null ? null : events / seconds;
            sample.tokens = tokens === null ? null : tokens / seconds;
            if (tokens) {
              recent = scrape.buckets.map(function (bucket, i) {
                var before = previousScrape.buckets[i];
                return [bucket[0], before && before[0] === bucket[0] ? bucket[1] - before[1] : bucket[1]];
              });
              sample.p50 = quantile(0.5, recent);
              sample.p99 = quantile(0.99, recent);
            }
            samples.push(sample);
          }
          previousScrape = scrape;
          while (samples.length && samples[0].t < scrape.t - WINDOW_MS) samples.shift();

          // The tiles show the last interval, or everything since start when no token was sent in it.
          var shown = recent || scrape.buckets;
          text("events-rate", fmt(sample.events, 1));
          text("tokens-rate", fmt(sample.tokens, 1));
          [
            ["latency-p50", 0.5],
            ["latency-p90", 0.9],
            ["latency-p99", 0.99],
          ].forEach(function (tile) {
            var value = quantile(tile[1], shown);
            var dd = $(tile[0]);
            dd.textContent = fmtMs(value);
            if (value !== null && !recent) {
              var note = document.createElement("small");
              note.textContent = " since start";
              dd.appendChild(note);
            }
          });
          reportActive("metrics", []);
        },
        function (err) {
          reportActive("metrics", ["/metrics could not be read: " + err.message]);
        }
      );
  }

  // -- /v1/stats and /dashboard/data ----------------------------------------------------------------

  function cell(row, value) {
    var td = document.createElement("td");
    td.textContent = value;
    row.appendChild(td);
  }

  function loadStats() {
    var key = apiKey();
    if (!key) {
      text("models-note", "Statistics and dead letters need an API key: enter it above.");
      return Promise.resolve();
    }
    return get("/v1/stats", { Authorization: "Bearer " + key })
      .then(function (response) {
        return readJson(response).then(function (body) {
          if (!response.ok) throw new Error((body.error && body.error.message) || "/v1/stats answered " + response.status);
          return body;
        });
      })
      .then(
        function (body) {
          var readers = body.readers || {};
          text("readers-total", fmt(readers.total, 0));
          text("readers-generations", fmt(readers.generations, 0));
          text("readers-sessions", fmt(readers.sessions, 0));
          var models = body.models || {};
          var rows = $("models");
          rows.textContent = "";
          var failed = {};
          Object.keys(models).forEach(function (name) {
            var m = models[name];
            var byStatus = m.by_status || {};
            var row = document.createElement("tr");
            var th = document.createElement("th");
            th.scope = "row";
            th.textContent = name;
            row.appendChild(th);
            cell(row, fmt(m.generations, 0));
            cell(row, fmt(byStatus.completed || 0, 0));
            cell(row, fmt(byStatus.failed || 0, 0));
            cell(row, fmt(byStatus.cancelled || 0, 0));
            cell(row, fmt(m.tokens, 0));
            cell(row, m.ttft_ms.p50 === null ? "–" : fmt(m.ttft_ms.p50, 1) + " ms");
            cell(row, m.ttft_ms.p95 === null ? "–" : fmt(m.ttft_ms.p95, 1) + " ms");
            cell(row, fmt(m.tokens_per_s.p50, 1));
            cell(row, fmt(m.tokens_per_s.p95, 1));
            rows.appendChild(row);
            failed[name] = byStatus.failed || 0;
            if (previousFailed && failed[name] > (previousFailed[name] || 0)) {
              var n = failed[name] - (previousFailed[name] || 0);
              addError("generations", n + " " + name + " generation" + (n > 1 ? "s" : "") + " failed");
            }
          });
          previousFailed = failed;
          text("models-note", "TTFT: from submission to the first token, over the last 1000 generations of each model.");
          reportActive("stats", []);
        },
        function (err) {
          text("models-note", "Statistics unavailable: " + err.message);
          reportActive("stats", ["/v1/stats: " + err.message]);
        }
      );
  }

  function loadDeadLetters() {
    var key = apiKey();
    if (!key) return Promise.resolve();
    return get("/dashboard/data", { Authorization: "Bearer " + key })
      .then(function (response) {
        if (!response.ok) throw new Error("/dashboard/data answered " + response.status);
        return response.json();
      })
      .then(
        function (body) {
          var recent = (body.dead_letters && body.dead_letters.recent) || [];
          recent.forEach(function (entry) {
            if (seenDeadLetters[entry.id]) return;
            seenDeadLetters[entry.id] = true;
            addError(
              "dead letter",
              (entry.generation_id || "?") + " entry " + (entry.entry_id || "?") + ": " + (entry.error || "unknown error"),
              entry.at * 1000
            );
          });
        },
        function () {
          // Reported by the /v1/stats request, which uses the same key.
        }
      );
  }

  // -- charts --------------------------------------------------------------------------------------

  function svg(name, attributes, parent) {
    var el = document.createElementNS(SVG_NS, name);
    Object.keys(attributes).forEach(function (key) {
      el.setAttribute(key, String(attributes[key]));
    });
    if (parent) parent.appendChild(el);
    return el;
  }

  /** The smallest of 1, 2, 2.5, 5 × 10^k that is at least `value`. */
  function niceCeiling(value) {
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * power >= value) return steps[i] * power;
    return 10 * power;
  }

  /**
   * Draws line series over the last WINDOW_MS (at least MIN_SPAN_MS): a gap where a value is null, a dot on each line's last point.
   * @param {SVGSVGElement} chart
   * @param {{cls: string, key: string, scale: number, area: boolean}[]} series
   * @param {{minTop: number, digits: number, describe: function(): string}} options
   */
  function drawChart(chart, series, options) {
    var width = chart.clientWidth || 600;
    var height = chart.clientHeight || 220;
    var pad = { left: 48, right: 14, top: 10, bottom: 22 };
    var plotW = width - pad.left - pad.right;
    var plotH = height - pad.top - pad.bottom;
    var now = Date.now();
    // Up to WINDOW_MS: a page opened a moment ago spreads what it has over at least MIN_SPAN_MS.
    var span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, samples.length ? now - samples[0].t : 0));
    var start = now - span;
    var max = 0;
    samples.forEach(function (s) {
      series.forEach(function (line) {
        var v = s[line.key];
        if (v !== null && v * line.scale > max) max = v * line.scale;
      });
    });
    var top = niceCeiling(Math.max(max, options.minTop));
    var x = function (t) {
      return pad.left + ((t - start) / span) * plotW;
    };
    var y = function (v) {
      return pad.top + plotH - (v / top) * plotH;
    };

    chart.setAttribute("viewBox", "0 0 " + width + " " + height);
    Array.prototype.slice.call(chart.childNodes).forEach(function (node) {
      if (node.nodeName !== "desc") chart.removeChild(node);
    });
    var axes = svg("g", { "aria-hidden": "true" }, chart);
    for (var i = 0; i <= 4; i++) {
      var value = (top * i) / 4;
      svg("line", { class: "gridline", x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }, axes);
      var label = svg("text", { x: pad.left - 6, y: y(value) + 4, "text-anchor": "end" }, axes);
      label.textContent = fmt(value, options.digits);
    }
    var step = span <= 60000 ? 10000 : span <= 180000 ? 30000 : 60000;
    for (var age = 0; age <= span; age += step) {
      var tick = svg("text", { x: x(now - age), y: height - 6, "text-anchor": age === 0 ? "end" : "middle" }, axes);
      tick.textContent = age === 0 ? "now" : "−" + (age % 60000 ? age / 1000 + " s" : age / 60000 + " min");
    }
    series.forEach(function (line) {
      // Contiguous runs of values: a null (no data in that interval) breaks the line.
      var runs = [];
      var run = null;
      samples.forEach(function (s) {
        var v = s[line.key];
        if (v === null || v === undefined || s.t < start) {
          run = null;
          return;
        }
        if (run === null) runs.push((run = []));
        run.push([x(s.t).toFixed(1), y(v * line.scale).toFixed(1)]);
      });
      var d = runs
        .map(function (points) {
          return points
            .map(function (p, i) {
              return (i ? "L" : "M") + p[0] + "," + p[1];
            })
            .join("");
        })
        .join("");
      if (line.area && runs.length) {
        var base = y(0).toFixed(1);
        var area = runs
          .map(function (points) {
            var first = points[0];
            var last = points[points.length - 1];
            var edge = points
              .map(function (p) {
                return "L" + p[0] + "," + p[1];
              })
              .join("");
            return "M" + first[0] + "," + base + edge + "L" + last[0] + "," + base + "Z";
          })
          .join("");
        svg("path", { class: "area", d: area }, chart);
      }
      if (d) svg("path", { class: "series " + line.cls, d: d }, chart);
      var end = samples.length ? samples[samples.length - 1] : null;
      if (end && end[line.key] !== null && end[line.key] !== undefined) {
        svg("circle", { class: "dot " + line.cls, cx: x(end.t), cy: y(end[line.key] * line.scale), r: 3 }, chart);
      }
    });
    chart.querySelector("desc").textContent = options.describe();
  }

  function latest(key) {
    for (var i = samples.length - 1; i >= 0; i--) if (samples[i][key] !== null) return samples[i][key];
    return null;
  }

  function drawCharts() {
    drawChart(
      $("tokens-chart"),
      [
        { cls: "s2", key: "events", scale: 1, area: false },
        { cls: "s1", key: "tokens", scale: 1, area: true },
      ],
      {
        minTop: 5,
        digits: 2,
        describe: function () {
          return "Latest: " + fmt(latest("tokens"), 1) + " tokens/s, " + fmt(latest("events"), 1) + " events/s.";
        },
      }
    );
    drawChart(
      $("latency-chart"),
      [
        { cls: "s1", key: "p50", scale: 1000, area: false },
        { cls: "s2", key: "p99", scale: 1000, area: false },
      ],
      {
        minTop: 10,
        digits: 2,
        describe: function () {
          return "Latest: p50 " + fmtMs(latest("p50")) + ", p99 " + fmtMs(latest("p99")) + ".";
        },
      }
    );
  }

  // -- loop ----------------------------------------------------------------------------------------

  function refresh() {
    if (inFlight) return;
    inFlight = true;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    var started = Date.now();
    Promise.all([loadReadyz(), loadMetrics(), loadStats(), loadDeadLetters()]).then(function () {
      inFlight = false;
      drawCharts();
      text("updated", "Updated " + clock(new Date()) + " · every " + REFRESH_MS / 1000 + " s");
      if (!paused) timer = setTimeout(refresh, Math.max(0, REFRESH_MS - (Date.now() - started)));
    });
  }

  var fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromHash) {
    try {
      localStorage.setItem(KEY_STORE, fromHash);
    } catch (err) {
      // storage disabled: the key is used for this page only
    }
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("apikey").value = apiKey();
  $("keyform").addEventListener("submit", function (event) {
    event.preventDefault();
    try {
      localStorage.setItem(KEY_STORE, $("apikey").value.trim());
    } catch (err) {
      // storage disabled
    }
    previousFailed = null;
    if (!paused) refresh();
  });
  $("pause").addEventListener("click", function () {
    paused = !paused;
    this.setAttribute("aria-pressed", paused ? "true" : "false");
    this.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      if (timer !== null) clearTimeout(timer);
      timer = null;
    } else {
      previousScrape = null; // a rate across the pause would be an average over it
      refresh();
    }
  });
  window.addEventListener("resize", drawCharts);
  refresh();
})();
