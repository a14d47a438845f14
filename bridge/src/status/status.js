// The polybridge status page: polls /api/routes and /api/status once a second and shows
// routes, rates, counters, errors, in-flight deliveries, dead letters and broker
// connections. Plain DOM, no dependencies, no build step. Values from the server are only
// ever set as text (never parsed as HTML).
"use strict";

(function () {
  const POLL_MS = 1000;
  const HISTORY = 60; // samples kept for the sparkline: the last minute
  const RATE_WINDOW = 5; // seconds the rates are averaged over
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const count = new Intl.NumberFormat("en");

  // Per route (by name): recent samples of its counters, to turn them into rates, and the
  // history of its out rate.
  const samples = new Map();
  const histories = new Map();
  const routeRows = new Map();
  const brokerRows = new Map();
  let previousTotals = null;
  let announced = "";
  let lastUpdate = null;

  function rate(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    if (value === 0) return "0";
    if (value < 10) return value.toFixed(1);
    return count.format(Math.round(value));
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + m + " min";
    if (m > 0) return m + " min " + sec + " s";
    return sec + " s";
  }

  function latency(seconds) {
    if (seconds === null || !isFinite(seconds)) return "–";
    if (seconds < 0.001) return (seconds * 1e6).toFixed(0) + " µs";
    if (seconds < 1) return (seconds * 1000).toFixed(1) + " ms";
    return seconds.toFixed(2) + " s";
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function badge(el, text, kind) {
    setText(el, text);
    el.className = "badge badge-" + kind;
  }

  function el(tag, className, field) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (field) e.dataset.field = field;
    return e;
  }

  async function getJson(path) {
    const response = await fetch(path, {
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
    return response.json();
  }

  // Rates over the last RATE_WINDOW seconds of the bridge's own clock (its uptime), so
  // they stay right whatever the page's timers do; null until there are two samples.
  // A restarted route (new instance) or a counter that went back starts over.
  function rates(key, instance, t, received, delivered) {
    let s = samples.get(key);
    if (!s || s.instance !== instance) {
      s = { instance, list: [] };
      samples.set(key, s);
    }
    const list = s.list;
    const last = list[list.length - 1];
    if (last && (received < last.received || delivered < last.delivered)) list.length = 0;
    if (!last || t > last.t) list.push({ t, received, delivered });
    while (list.length > 2 && list[1].t <= t - RATE_WINDOW) list.shift();
    if (list.length < 2) return null;
    const first = list[0];
    const dt = t - first.t;
    if (dt <= 0) return null;
    return {
      in: (received - first.received) / dt,
      out: (delivered - first.delivered) / dt,
    };
  }

  function pushHistory(key, instance, value) {
    let h = histories.get(key);
    if (!h || h.instance !== instance) {
      h = { instance, values: [] };
      histories.set(key, h);
    }
    if (value !== null) {
      h.values.push(value);
      if (h.values.length > HISTORY) h.values.shift();
    }
    return h.values;
  }

  function sparkline(svg, values) {
    const width = 80;
    const height = 28;
    const peak = Math.max(1, ...values);
    // A young history spreads over at least a sixth of the minute, then grows to all of it.
    const span = Math.min(HISTORY, Math.max(10, values.length));
    const step = width / (span - 1);
    const offset = width - step * (values.length - 1);
    const points = values
      .map((v, i) => {
        const x = offset + i * step;
        const y = height - 2 - (v / peak) * (height - 4);
        return x.toFixed(1) + "," + y.toFixed(1);
      })
      .join(" ");
    let line = svg.querySelector("polyline");
    if (!line) {
      const base = document.createElementNS(SVG, "line");
      base.setAttribute("x1", "0");
      base.setAttribute("x2", String(width));
      base.setAttribute("y1", String(height - 1));
      base.setAttribute("y2", String(height - 1));
      base.setAttribute("class", "spark-base");
      svg.appendChild(base);
      line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", "spark-line");
      svg.appendChild(line);
    }
    line.setAttribute("points", values.length > 1 ? points : "");
    const label =
      values.length === 0
        ? "No rate yet"
        : "Delivered per second over the last " +
          values.length +
          " s: now " +
          rate(values[values.length - 1]) +
          ", peak " +
          rate(Math.max(...values));
    svg.setAttribute("aria-label", label);
    let title = svg.querySelector("title");
    if (!title) {
      title = document.createElementNS(SVG, "title");
      svg.insertBefore(title, svg.firstChild);
    }
    setText(title, label);
  }

  function routeRow(name) {
    let row = routeRows.get(name);
    if (row) return row;
    const tr = el("tr");
    tr.dataset.route = name;
    const head = el("th");
    head.scope = "row";
    const line = el("span", "route-line");
    const title = el("span", "route-name", "name");
    const state = el("span", "badge", "state");
    line.append(title, " ", state);
    const path = el("span", "route-path", "path");
    head.append(line, path);
    tr.appendChild(head);
    const cells = { name: title, state, path };
    for (const f of ["in-rate", "out-rate"]) {
      cells[f] = el("td", "num", f);
      tr.appendChild(cells[f]);
    }
    const spark = el("td", "spark");
    cells.spark = document.createElementNS(SVG, "svg");
    cells.spark.setAttribute("viewBox", "0 0 80 28");
    cells.spark.setAttribute("width", "80");
    cells.spark.setAttribute("height", "28");
    cells.spark.setAttribute("role", "img");
    spark.appendChild(cells.spark);
    tr.appendChild(spark);
    for (const f of [
      "received",
      "delivered",
      "acked",
      "filtered",
      "nacked",
      "retries",
      "dead_lettered",
    ]) {
      cells[f] = el("td", "num", f);
      tr.appendChild(cells[f]);
    }
    const errors = el("td", "errors");
    cells.errors = el("span", "num-inline", "errors");
    cells.errorKinds = el("span", "error-kinds", "error-kinds");
    errors.append(cells.errors, cells.errorKinds);
    tr.appendChild(errors);
    cells.in_flight = el("td", "num", "in_flight");
    tr.appendChild(cells.in_flight);
    cells.latency = el("td", "num", "latency");
    tr.appendChild(cells.latency);
    row = { tr, cells };
    routeRows.set(name, row);
    return row;
  }

  function renderRoutes(routes, status) {
    const body = $("routes-body");
    const byName = new Map(status.routes.map((r) => [r.name, r]));
    const seen = new Set();
    const order = [];
    let totalIn = 0;
    let totalOut = 0;
    let haveRates = false;
    for (const r of routes.routes) {
      const s = byName.get(r.name) || {};
      seen.add(r.name);
      const { tr, cells } = routeRow(r.name);
      tr.dataset.instance = String(r.instance);
      setText(cells.name, r.name);
      const sinks = r.sinks.map((k) => k.broker + ": " + k.destination).join(", ");
      setText(cells.path, r.source.broker + ": " + r.source.topic + " → " + sinks);
      if (r.subscribed) badge(cells.state, "subscribed", "ok");
      else badge(cells.state, "not subscribed", "bad");
      const received = s.received !== undefined ? s.received : r.received;
      const delivered = s.delivered !== undefined ? s.delivered : r.delivered;
      const rt = rates(r.name, r.instance, status.uptime_seconds, received, delivered);
      if (rt) {
        haveRates = true;
        totalIn += rt.in;
        totalOut += rt.out;
      }
      setText(cells["in-rate"], rate(rt && rt.in));
      setText(cells["out-rate"], rate(rt && rt.out));
      sparkline(cells.spark, pushHistory(r.name, r.instance, rt && rt.out));
      setText(cells.received, count.format(received));
      setText(cells.delivered, count.format(delivered));
      setText(cells.acked, count.format(r.acked));
      setText(cells.filtered, count.format(r.filtered));
      setText(cells.nacked, count.format(r.nacked));
      setText(cells.retries, s.retries !== undefined ? count.format(s.retries) : "–");
      setText(cells.dead_lettered, count.format(r.dead_lettered));
      cells.dead_lettered.classList.toggle("warn", r.dead_lettered > 0);
      const errorsTotal = s.errors_total || 0;
      setText(cells.errors, count.format(errorsTotal));
      cells.errors.classList.toggle("bad", errorsTotal > 0);
      const kinds = Object.entries(s.errors || {})
        .map(([k, n]) => k + " " + count.format(n))
        .join(", ");
      setText(cells.errorKinds, kinds ? "(" + kinds + ")" : "");
      setText(cells.in_flight, count.format(r.in_flight) + " / " + count.format(r.max_in_flight));
      const lat = s.latency && s.latency.count > 0 ? s.latency.sum_seconds / s.latency.count : null;
      setText(cells.latency, latency(lat));
      order.push(tr);
    }
    for (const [name, row] of routeRows) {
      if (!seen.has(name)) {
        routeRows.delete(name);
        samples.delete(name);
        histories.delete(name);
        row.tr.remove();
      }
    }
    if (order.length === 0) {
      const tr = el("tr", "empty");
      const td = el("td");
      td.colSpan = 14;
      td.textContent = "No routes are running.";
      tr.appendChild(td);
      body.replaceChildren(tr);
    } else {
      body.replaceChildren(...order);
    }
    return haveRates ? { in: totalIn, out: totalOut } : null;
  }

  function renderBrokers(routes, status) {
    const body = $("brokers-body");
    const users = new Map();
    for (const r of routes.routes) {
      const names = [r.source.broker, ...r.sinks.map((s) => s.broker)];
      for (const b of new Set(names)) {
        if (!users.has(b)) users.set(b, []);
        users.get(b).push(r.name);
      }
    }
    const seen = new Set();
    const order = [];
    for (const b of status.brokers) {
      seen.add(b.name);
      let row = brokerRows.get(b.name);
      if (!row) {
        const tr = el("tr");
        tr.dataset.broker = b.name;
        const head = el("th", null, "name");
        head.scope = "row";
        const cells = { name: head, scheme: el("td", null, "scheme") };
        const state = el("td");
        cells.state = el("span", "badge", "connected");
        state.appendChild(cells.state);
        cells.reconnects = el("td", "num", "reconnects");
        cells.users = el("td", null, "used-by");
        tr.append(head, cells.scheme, state, cells.reconnects, cells.users);
        row = { tr, cells };
        brokerRows.set(b.name, row);
      }
      const c = row.cells;
      setText(c.name, b.name);
      setText(c.scheme, b.scheme + "://");
      if (b.connected) badge(c.state, "connected", "ok");
      else badge(c.state, "disconnected", "bad");
      setText(c.reconnects, count.format(b.reconnects));
      setText(c.users, (users.get(b.name) || []).join(", ") || "–");
      order.push(row.tr);
    }
    for (const [name, row] of brokerRows) {
      if (!seen.has(name)) {
        brokerRows.delete(name);
        row.tr.remove();
      }
    }
    if (order.length === 0) {
      const tr = el("tr", "empty");
      const td = el("td");
      td.colSpan = 5;
      td.textContent = "No brokers are connected.";
      tr.appendChild(td);
      body.replaceChildren(tr);
    } else {
      body.replaceChildren(...order);
    }
  }

  function overall(status) {
    const waiting = status.routes.filter((r) => !r.subscribed).map((r) => r.name);
    const down = status.brokers.filter((b) => !b.connected).map((b) => b.name);
    if (waiting.length > 0) {
      return ["Not ready: " + waiting.join(", ") + " not subscribed", "bad"];
    }
    if (down.length > 0) return ["Degraded: " + down.join(", ") + " disconnected", "warn"];
    if (status.routes.length === 0) return ["Idle: no routes", "warn"];
    return ["Healthy", "ok"];
  }

  function announce(text) {
    if (text !== announced) {
      announced = text;
      $("announce").textContent = "Bridge status: " + text;
    }
  }

  function render(routes, status) {
    const total = renderRoutes(routes, status);
    renderBrokers(routes, status);
    const t = status.totals;
    setText($("total-in-rate"), rate(total && total.in));
    setText($("total-out-rate"), rate(total && total.out));
    setText($("total-received"), count.format(t.received));
    setText($("total-delivered"), count.format(t.delivered));
    setText($("total-in-flight"), count.format(t.in_flight));
    setText($("total-dead"), count.format(t.dead_lettered));
    $("total-dead").classList.toggle("warn", t.dead_lettered > 0);
    setText($("total-errors"), count.format(t.errors));
    $("total-errors").classList.toggle("bad", t.errors > 0);
    previousTotals = t;
    setText($("version"), status.version);
    setText($("uptime"), duration(status.uptime_seconds));
    const [text, kind] = overall(status);
    badge($("overall"), text, kind);
    announce(text);
    lastUpdate = new Date();
    const updated = $("updated");
    updated.dateTime = lastUpdate.toISOString();
    setText(updated, lastUpdate.toLocaleTimeString());
    const problem = $("problem");
    problem.hidden = true;
    problem.textContent = "";
    document.body.dataset.state = "live";
  }

  function failed(error) {
    const problem = $("problem");
    const since = lastUpdate ? " The numbers shown are from " + lastUpdate.toLocaleTimeString() + "." : "";
    problem.textContent =
      "Cannot reach the bridge's admin server (" + error.message + "); retrying every second." + since;
    problem.hidden = false;
    badge($("overall"), "Unreachable", "bad");
    announce("unreachable");
    document.body.dataset.state = previousTotals ? "stale" : "error";
  }

  async function poll() {
    try {
      const [routes, status] = await Promise.all([getJson("api/routes"), getJson("api/status")]);
      render(routes, status);
    } catch (error) {
      failed(error);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
