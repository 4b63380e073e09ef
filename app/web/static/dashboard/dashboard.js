/* payload-stats dashboard. Plain browser JavaScript, no build step; the only
 * library is the vendored uPlot (vendor/uplot). Every number comes from the
 * service's JSON API, read with the tab's API token when the service has one:
 *   GET stats/status  the open window, the flush lag and pending windows
 *   GET stats/live    the top customer/content pairs still in Redis (server-side
 *                     top-N, filters and search) and the sums per window
 *   GET stats         flushed windows (group_by=customer, summed here) and the
 *                     chosen range (bucket 5m, 1h or 1d)
 * What is drawn is kept in window.psDashboard for tests and curious operators.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "payload-stats.token";
  var POLL_MS = 2000;
  var WINDOWS_SHOWN = 30;
  var MAX_PAGES = 50;
  var BUCKET_SECONDS = { "5m": 300, "1h": 3600, "1d": 86400 };
  var COLORS = { cdn: "#3b6fd8", p2p: "#1fa37a", share: "#d9822b" };

  var $ = function (id) { return document.getElementById(id); };
  var tokenRequired = document.body.getAttribute("data-token-required") === "true";

  var state = {
    customer: "", content: "", search: "", limit: 50,
    status: null, live: null, historyKey: "", historyAt: 0,
    flushed: [], clockOffset: 0,
  };
  var dash = {
    state: state,
    charts: { windows: null, range: null },
    open: null,
    requests: { ok: 0, failed: 0, unauthorized: 0 },
    renders: 0,
    ready: false,
    errors: [],
  };
  window.psDashboard = dash;

  // --- formatting ---------------------------------------------------------------------------

  function fmtInt(n) { return Number(n).toLocaleString("en-US"); }

  function fmtBytes(n) {
    if (n == null) return "–";
    var units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    var v = Number(n), i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    if (i === 0) return v.toFixed(0) + " B";
    return (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2)) +
      " " + units[i];
  }

  function plural(n, word) { return fmtInt(n) + " " + word + (n === 1 ? "" : "s"); }

  function fmtShare(cdn, p2p) {
    var total = cdn + p2p;
    return total ? (100 * p2p / total).toFixed(1) + " %" : "–";
  }

  function fmtDuration(ms) {
    if (ms == null) return "–";
    var s = Math.round(ms / 1000);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    var h = Math.floor(m / 60);
    return fmtInt(h) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function fmtViewers(watchMs, seconds) {
    if (watchMs == null || !(seconds > 0)) return "–";
    return (watchMs / (seconds * 1000)).toFixed(1);
  }

  // Average concurrent viewers of the open window so far: watch time over the time
  // elapsed, shown once enough of the window has passed for it to mean something
  // (a payload reports the watching of its whole interval when it arrives).
  function openViewers(watchMs, status) {
    var elapsed = status.open_window.elapsed_seconds;
    if (elapsed < Math.min(30, status.window_seconds / 2)) return "–";
    return fmtViewers(watchMs, elapsed);
  }

  function fmtTime(epoch) {
    return new Date(epoch * 1000).toISOString().slice(11, 19);
  }

  function fmtDateTime(epoch, seconds) {
    return new Date(epoch * 1000).toISOString().slice(0, seconds ? 19 : 16).replace("T", " ");
  }

  // Time axis labels in UTC, 24 h: seconds for short spans, dates for long ones.
  function timeLabels(u, splits) {
    var span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
    return splits.map(function (t) {
      var iso = new Date(t * 1000).toISOString();
      if (span > 3 * 86400) return iso.slice(5, 10);
      if (span > 86400) return iso.slice(5, 10) + " " + iso.slice(11, 16);
      if (span > 1800) return iso.slice(11, 16);
      return iso.slice(11, 19);
    });
  }

  function epochOf(iso) { return Date.parse(iso) / 1000; }

  function isoOf(epoch) { return new Date(epoch * 1000).toISOString().replace(".000Z", "Z"); }

  function serverNow() { return Date.now() / 1000 + state.clockOffset; }

  // --- the API --------------------------------------------------------------------------------

  function Stop(reason) { this.reason = reason; }

  function api(path, params) {
    var query = new URLSearchParams();
    Object.keys(params || {}).forEach(function (k) {
      var v = params[k];
      if (v !== "" && v != null) query.set(k, v);
    });
    var url = path + (query.toString() ? "?" + query.toString() : "");
    var headers = { Accept: "application/json" };
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    return fetch(url, { headers: headers, cache: "no-store" }).then(function (response) {
      if (response.status === 401) {
        dash.requests.unauthorized++;
        askToken(Boolean(token));
        throw new Stop("token");
      }
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) {
          dash.requests.failed++;
          var error = new Error(body.message || "HTTP " + response.status);
          error.status = response.status;
          throw error;
        }
        dash.requests.ok++;
        return body;
      });
    });
  }

  // Every page of a GET stats query (rows grouped by customer: few per time).
  function allRows(params) {
    var rows = [];
    var truncated = false;
    function page(cursor, n) {
      var p = Object.assign({}, params, { limit: 1000 });
      if (cursor) p.cursor = cursor;
      return api("stats", p).then(function (body) {
        rows = rows.concat(body.rows || []);
        if (body.next && n + 1 < MAX_PAGES) return page(body.next, n + 1);
        truncated = Boolean(body.next);
        return { rows: rows, truncated: truncated };
      });
    }
    return page(null, 0);
  }

  function filters() {
    return { customer: state.customer, content: state.content };
  }

  // Rows summed per time: {time: {cdn, p2p, sessions, payloads, watch_ms|null}}.
  function sumByTime(rows) {
    var out = {};
    rows.forEach(function (r) {
      var t = epochOf(r.time);
      var s = out[t] || (out[t] = { cdn: 0, p2p: 0, sessions: 0, payloads: 0, watch_ms: null });
      s.cdn += r.cdn; s.p2p += r.p2p; s.sessions += r.sessions; s.payloads += r.payloads;
      if (r.watch_ms != null) s.watch_ms = (s.watch_ms || 0) + r.watch_ms;
    });
    return out;
  }

  // --- the token --------------------------------------------------------------------------------

  var asking = false;

  function askToken(refused) {
    if (refused) sessionStorage.removeItem(TOKEN_KEY);
    $("token-refused").hidden = !refused;
    $("forget-token").hidden = true;
    if (!asking) {
      asking = true;
      $("token-input").value = "";
      $("token-dialog").showModal();
      $("token-input").focus();
    }
  }

  $("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    asking = false;
    $("token-dialog").close();
    $("forget-token").hidden = false;
    state.historyKey = "";
    poll();
    loadRange();
  });

  $("token-dialog").addEventListener("cancel", function (event) { event.preventDefault(); });

  $("forget-token").addEventListener("click", function () { askToken(true); $("token-refused").hidden = true; });

  // --- status ----------------------------------------------------------------------------------

  function renderStatus(status) {
    var L = status.window_seconds;
    var ow = status.open_window;
    $("status-window").textContent = L + " s windows · open window ends " +
      fmtTime(epochOf(ow.end)) + " UTC (" + Math.floor(ow.elapsed_seconds) + " s of " + L + " s)";
    var f = status.flush;
    var last = f.seconds_since_last_success == null ? "no flush yet" :
      "last flush " + Math.round(f.seconds_since_last_success) + " s ago";
    $("status-flush").textContent = "flush lag " + f.lag_seconds.toFixed(1) + " s · " +
      f.pending_windows + " window" + (f.pending_windows === 1 ? "" : "s") + " pending · " + last;
    $("status-flush").dataset.lag = String(f.lag_seconds);
    $("status-flush").dataset.pending = String(f.pending_windows);
  }

  function showError(error) {
    if (error instanceof Stop) return;
    var box = $("status-error");
    box.hidden = false;
    box.textContent = (error && error.message) || String(error);
    dash.errors.push(box.textContent);
  }

  function clearError() { $("status-error").hidden = true; }

  // --- the open window: cards and table ----------------------------------------------------------

  function setValue(id, text, exact) {
    var el = $(id);
    el.textContent = text;
    if (exact == null) { el.removeAttribute("data-value"); el.removeAttribute("title"); }
    else { el.dataset.value = String(exact); el.title = fmtInt(exact); }
  }

  function renderCards(live, status) {
    var end = epochOf(status.open_window.end);
    var w = (live.windows || []).filter(function (x) { return epochOf(x.time) === end; })[0] ||
      { cdn: 0, p2p: 0, sessions: 0, payloads: 0, watch_ms: 0 };
    dash.open = { time: end, cdn: w.cdn, p2p: w.p2p, sessions: w.sessions, payloads: w.payloads,
      watch_ms: w.watch_ms == null ? null : w.watch_ms };
    $("open-window-label").textContent = "ending " + fmtTime(end) + " UTC" +
      (state.customer || state.content ? " · " + [state.customer, state.content].filter(Boolean).join(" / ") : "");
    setValue("total-cdn", fmtBytes(w.cdn), w.cdn);
    setValue("total-p2p", fmtBytes(w.p2p), w.p2p);
    setValue("total-share", fmtShare(w.cdn, w.p2p), null);
    setValue("total-sessions", fmtInt(w.sessions), w.sessions);
    setValue("total-payloads", fmtInt(w.payloads), w.payloads);
    setValue("total-watch", fmtDuration(w.watch_ms), w.watch_ms);
    setValue("total-viewers", openViewers(w.watch_ms, status), null);
  }

  function cell(tr, text, exact, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    if (exact != null) { td.dataset.value = String(exact); td.title = fmtInt(exact); }
    tr.appendChild(td);
    return td;
  }

  function renderTable(live, status) {
    var tbody = $("live-table").tBodies[0];
    var openEnd = epochOf(status.open_window.end);
    var L = status.window_seconds;
    var fresh = document.createDocumentFragment();
    live.rows.forEach(function (r) {
      var t = epochOf(r.time);
      var tr = document.createElement("tr");
      tr.dataset.customer = r.customer;
      tr.dataset.content = r.content;
      tr.dataset.time = String(t);
      if (t !== openEnd) tr.className = "pending";
      cell(tr, fmtTime(t) + (t === openEnd ? "" : " (closed)"));
      cell(tr, r.customer);
      cell(tr, r.content);
      cell(tr, fmtBytes(r.cdn), r.cdn, true);
      cell(tr, fmtBytes(r.p2p), r.p2p, true);
      var share = cell(tr, fmtShare(r.cdn, r.p2p), null, true);
      if (r.cdn + r.p2p) {
        var bar = document.createElement("span");
        bar.className = "share-bar";
        bar.style.width = Math.round(40 * r.p2p / (r.cdn + r.p2p)) + "px";
        share.prepend(bar);
      }
      cell(tr, fmtInt(r.sessions), r.sessions, true);
      cell(tr, fmtInt(r.payloads), r.payloads, true);
      var watch = r.watch_ms == null ? null : r.watch_ms;
      cell(tr, fmtDuration(watch), watch, true);
      cell(tr, t === openEnd ? openViewers(watch, status) : fmtViewers(watch, L), null, true);
      fresh.appendChild(tr);
    });
    tbody.replaceChildren(fresh);
    var note = fmtInt(live.rows.length) + " of " + fmtInt(live.matched) + " customer/content pairs";
    if (state.search) note += " matching \u201c" + state.search + "\u201d";
    if (live.counters_read < live.counters) {
      note += " (partial: read " + fmtInt(live.counters_read) + " of " + fmtInt(live.counters) +
        " counters, STATS_LIVE_MAX_KEYS)";
    }
    $("live-note").textContent = note;
    fillList("customers", live.rows.map(function (r) { return r.customer; }));
    fillList("contents", live.rows.map(function (r) { return r.content; }));
  }

  var known = { customers: {}, contents: {} };

  function fillList(id, names) {
    var seen = known[id];
    var list = $(id);
    names.forEach(function (name) {
      if (seen[name] || Object.keys(seen).length >= 500) return;
      seen[name] = true;
      var option = document.createElement("option");
      option.value = name;
      list.appendChild(option);
    });
  }

  $("live-table").tBodies[0].addEventListener("click", function (event) {
    var tr = event.target.closest("tr");
    if (!tr) return;
    setFilters(tr.dataset.customer, tr.dataset.content);
  });

  // --- charts ------------------------------------------------------------------------------------

  function barPaths() {
    return uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 80] }) : undefined;
  }

  function makeChart(el, holder) {
    var opts = {
      width: Math.max(320, el.clientWidth || 800),
      height: 260,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: {
        // Half a bar of room at each end, so the first and last bars show whole.
        x: { time: true, range: function (u, min, max) {
          var xs = u.data[0];
          var pad = xs.length > 1 ? (xs[1] - xs[0]) / 2 : 1;
          return [min - pad, max + pad];
        } },
        pct: { range: [0, 100] },
      },
      legend: { live: true },
      series: [
        { label: "UTC", value: function (u, v) { return v == null ? "–" : fmtDateTime(v, true); } },
        { label: "P2P", stroke: COLORS.p2p, fill: COLORS.p2p + "cc", paths: barPaths(),
          points: { show: false },
          value: function (u, v, si, i) { return i == null ? "–" : fmtBytes(holder.data.p2p[i]); } },
        { label: "CDN", stroke: COLORS.cdn, fill: COLORS.cdn + "cc", paths: barPaths(),
          points: { show: false },
          value: function (u, v, si, i) { return i == null ? "–" : fmtBytes(holder.data.cdn[i]); } },
        { label: "P2P share", scale: "pct", stroke: COLORS.share, width: 2, spanGaps: false,
          value: function (u, v) { return v == null ? "–" : v.toFixed(1) + " %"; } },
      ],
      axes: [
        { values: timeLabels, space: 70 },
        { size: 70, values: function (u, vals) { return vals.map(function (v) { return fmtBytes(v); }); } },
        { side: 1, scale: "pct", grid: { show: false },
          values: function (u, vals) { return vals.map(function (v) { return v + " %"; }); } },
      ],
    };
    return new uPlot(opts, [[], [], [], []], el);
  }

  // {x, cdn, p2p, share, sessions, payloads, watch_ms, pending} -> the chart and the page.
  function draw(name, el, data) {
    var holder = charts[name] || (charts[name] = { data: data });
    holder.data = data;
    if (!holder.plot) holder.plot = makeChart(el, holder);
    var totals = data.cdn.map(function (c, i) { return c + data.p2p[i]; });
    holder.plot.setData([data.x, totals, data.cdn, data.share]);
    dash.charts[name] = data;
    el.dataset.points = JSON.stringify({ x: data.x, cdn: data.cdn, p2p: data.p2p });
  }

  var charts = {};

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (name) {
      var holder = charts[name];
      if (holder.plot) holder.plot.setSize({ width: Math.max(320, holder.plot.root.parentNode.clientWidth), height: 260 });
    });
  });

  function series(times, sums, extra) {
    var data = { x: [], cdn: [], p2p: [], share: [], sessions: [], payloads: [], watch_ms: [], pending: [] };
    times.forEach(function (t) {
      var s = sums[t] || { cdn: 0, p2p: 0, sessions: 0, payloads: 0, watch_ms: null };
      data.x.push(t);
      data.cdn.push(s.cdn);
      data.p2p.push(s.p2p);
      var total = s.cdn + s.p2p;
      data.share.push(total ? Math.round(1000 * 100 * s.p2p / total) / 1000 : null);
      data.sessions.push(s.sessions);
      data.payloads.push(s.payloads);
      data.watch_ms.push(s.watch_ms);
      data.pending.push(Boolean(extra && extra[t]));
    });
    return data;
  }

  // The sums over a chart; watch time only when every window with payloads has it
  // (history rows carry watch_ms only where the service reports it).
  function totalsOf(data) {
    var t = { cdn: 0, p2p: 0, sessions: 0, payloads: 0, watch_ms: 0 };
    var missing = false;
    data.x.forEach(function (_, i) {
      t.cdn += data.cdn[i]; t.p2p += data.p2p[i]; t.sessions += data.sessions[i];
      t.payloads += data.payloads[i];
      if (data.watch_ms[i] != null) t.watch_ms += data.watch_ms[i];
      else if (data.payloads[i] > 0) missing = true;
    });
    if (missing || !t.payloads) t.watch_ms = null;
    return t;
  }

  function describe(t, seconds) {
    var text = "CDN " + fmtBytes(t.cdn) + " · P2P " + fmtBytes(t.p2p) + " (" + fmtShare(t.cdn, t.p2p) +
      ") · " + plural(t.sessions, "session") + " started · " + plural(t.payloads, "payload");
    if (t.watch_ms != null) {
      text += " · watch time " + fmtDuration(t.watch_ms) + " (avg " + fmtViewers(t.watch_ms, seconds) +
        " viewers)";
    }
    return text;
  }

  // The last windows: flushed ones from GET stats, the others from /stats/live.
  function renderWindows(status, live) {
    var L = status.window_seconds;
    var openEnd = epochOf(status.open_window.end);
    var times = [];
    for (var i = WINDOWS_SHOWN - 1; i >= 0; i--) times.push(openEnd - i * L);
    var sums = sumByTime(state.flushed);
    var pending = {};
    (live.windows || []).forEach(function (w) {
      var t = epochOf(w.time);
      pending[t] = true;
      var s = sums[t] || (sums[t] = { cdn: 0, p2p: 0, sessions: 0, payloads: 0, watch_ms: null });
      s.cdn += w.cdn; s.p2p += w.p2p; s.sessions += w.sessions; s.payloads += w.payloads;
      if (w.watch_ms != null) s.watch_ms = (s.watch_ms || 0) + w.watch_ms;
    });
    var data = series(times, sums, pending);
    draw("windows", $("chart-windows"), data);
    $("windows-note").textContent = "last " + WINDOWS_SHOWN + " windows (" +
      fmtDuration(WINDOWS_SHOWN * L * 1000) + "): " + describe(totalsOf(data), WINDOWS_SHOWN * L);
  }

  function refreshHistory(status, force) {
    var L = status.window_seconds;
    var openEnd = epochOf(status.open_window.end);
    var key = [openEnd, status.flush.rows, status.flush.pending_windows, state.customer, state.content].join("|");
    if (!force && key === state.historyKey && Date.now() - state.historyAt < 15000) {
      return Promise.resolve();
    }
    var params = Object.assign(filters(), {
      group_by: "customer",
      from: isoOf(openEnd - (WINDOWS_SHOWN - 1) * L),
      to: isoOf(openEnd + L),
    });
    return allRows(params).then(function (found) {
      state.flushed = found.rows;
      state.historyKey = key;
      state.historyAt = Date.now();
      fillList("customers", found.rows.map(function (r) { return r.customer; }));
    });
  }

  // The chosen range, per bucket.
  function loadRange() {
    if (!state.status) return;
    var bucket = $("range-bucket").value;
    var size = BUCKET_SECONDS[bucket];
    var span = $("range-span").value;
    var from, to;
    if (span === "custom") {
      from = Date.parse($("range-from").value + "Z") / 1000;
      to = Date.parse($("range-to").value + "Z") / 1000;
      if (!(from < to)) { $("range-note").textContent = "Choose a start before the end."; return; }
    } else {
      to = serverNow();
      from = to - Number(span);
    }
    var first = Math.floor(from / size) * size;
    var params = Object.assign(filters(), { group_by: "customer", bucket: bucket, from: isoOf(from), to: isoOf(to) });
    $("range-note").textContent = "loading …";
    allRows(params).then(function (found) {
      var sums = sumByTime(found.rows);
      var times = [];
      if ((to - first) / size <= 5000) {
        for (var t = first; t < to; t += size) times.push(t);
      } else {
        times = Object.keys(sums).map(Number).sort(function (a, b) { return a - b; });
      }
      var data = series(times, sums, null);
      data.bucket = bucket;
      data.from = from;
      data.to = to;
      draw("range", $("chart-range"), data);
      $("range-note").textContent = fmtDateTime(from) + " to " + fmtDateTime(to) + " UTC, per " +
        $("range-bucket").selectedOptions[0].textContent + ": " + describe(totalsOf(data), to - from) +
        (found.truncated ? " (more rows than shown: narrow the range)" : "");
      dash.renders++;
    }).catch(function (error) {
      if (error instanceof Stop) return;
      $("range-note").textContent = "Could not load the range: " + error.message;
    });
  }

  $("range-span").addEventListener("change", function () {
    var custom = $("range-span").value === "custom";
    $("range-custom").hidden = !custom;
    var span = Number($("range-span").value);
    if (!custom) $("range-bucket").value = span <= 21600 ? "5m" : span <= 604800 ? "1h" : "1d";
    if (custom && !$("range-from").value) {
      var now = serverNow();
      $("range-from").value = isoOf(now - 86400).slice(0, 19);
      $("range-to").value = isoOf(now).slice(0, 19);
    }
    if (!custom) loadRange();
  });
  $("range-bucket").addEventListener("change", loadRange);
  $("range-load").addEventListener("click", loadRange);

  // --- filters and search ------------------------------------------------------------------------

  function setFilters(customer, content) {
    $("filter-customer").value = customer;
    $("filter-content").value = content;
    applyFilters();
  }

  function applyFilters() {
    state.customer = $("filter-customer").value.trim();
    state.content = $("filter-content").value.trim();
    state.historyKey = "";
    poll();
    loadRange();
  }

  $("filter-customer").addEventListener("change", applyFilters);
  $("filter-content").addEventListener("change", applyFilters);
  $("filter-clear").addEventListener("click", function () { setFilters("", ""); });

  var searchTimer = null;
  $("search").addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () {
      state.search = $("search").value.trim();
      poll();
    }, 300);
  });
  $("limit").addEventListener("change", function () {
    state.limit = Number($("limit").value);
    poll();
  });

  // --- polling ----------------------------------------------------------------------------------

  var timer = null;
  var running = false;
  var again = false;

  function poll() {
    if (asking) return;
    if (running) { again = true; return; }
    clearTimeout(timer);
    running = true;
    var status;
    api("stats/status")
      .then(function (s) {
        status = s;
        state.status = s;
        state.clockOffset = epochOf(s.now) - Date.now() / 1000;
        renderStatus(s);
        var liveParams = Object.assign(filters(), { search: state.search, limit: state.limit });
        // History from PostgreSQL failing (down, or a read refused) leaves the live
        // numbers shown; the error is shown beside them.
        var history = refreshHistory(s, false).then(
          function () { return null; },
          function (error) { if (error instanceof Stop) throw error; return error; }
        );
        return Promise.all([api("stats/live", liveParams), history]);
      })
      .then(function (results) {
        var live = results[0];
        state.live = live;
        renderCards(live, status);
        renderTable(live, status);
        renderWindows(status, live);
        if (results[1]) showError(new Error("history: " + results[1].message));
        else clearError();
        var first = !dash.ready;
        dash.ready = true;
        dash.renders++;
        if (first) loadRange();
      })
      .catch(showError)
      .then(function () {
        running = false;
        if (again) { again = false; poll(); return; }
        if (!asking) timer = setTimeout(poll, document.hidden ? 10000 : POLL_MS);
      });
  }

  document.addEventListener("visibilitychange", function () { if (!document.hidden) poll(); });

  if (tokenRequired && !sessionStorage.getItem(TOKEN_KEY)) {
    askToken(false);
  } else {
    if (sessionStorage.getItem(TOKEN_KEY)) $("forget-token").hidden = false;
    poll();
  }
})();
