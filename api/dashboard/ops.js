// The operators' dashboard: polls GET /v1/ops/overview and draws it. No dependencies, no build step.
// Every value from the API is written with textContent or setAttribute, never parsed as HTML:
// dead-letter excerpts and device ids come from devices, and devices are not trusted.
"use strict";

(() => {
  const KEY_STORE = "cityingest.opsKey";
  const HISTORY = 120; // samples kept for the charts (6 minutes at the default interval)
  const FETCH_TIMEOUT_MS = 15000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  // ?interval=<seconds between polls>&latest=<dead letters and devices listed>, both optional.
  const query = new URLSearchParams(window.location.search);
  const requested = Number(query.get("interval"));
  const intervalS = Number.isFinite(requested) && requested >= 1 ? Math.min(requested, 60) : 3;
  const wanted = Number.parseInt(query.get("latest") || "", 10);
  const latest = Number.isFinite(wanted) ? Math.max(0, Math.min(wanted, 100)) : 10;

  const state = { polls: 0, timer: null, inFlight: false, history: [] };
  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
  const rates = new Intl.NumberFormat("en", { maximumFractionDigits: 1, minimumFractionDigits: 1 });

  // -- small DOM helpers --------------------------------------------------------------------------
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function setValue(id, value, format) {
    const node = $(id);
    const known = value !== null && value !== undefined;
    node.dataset.value = known ? String(value) : "";
    node.textContent = known ? format(value) : "–";
  }

  function fillRows(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = el("tr");
      for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
      return tr;
    }));
  }

  function time(iso) {
    if (!iso) return el("td", "–");
    const td = el("td", new Date(iso).toLocaleTimeString());
    td.title = iso;
    return td;
  }

  const fmtInt = (v) => numbers.format(v);
  const fmtRate = (v) => rates.format(v);

  // -- key and errors -----------------------------------------------------------------------------
  function showError(kind, message) {
    const box = $("error");
    box.dataset.kind = kind;
    box.textContent = message;
    box.hidden = false;
    $("status").dataset.state = "error";
  }

  function clearError() {
    const box = $("error");
    box.hidden = true;
    box.dataset.kind = "";
    box.textContent = "";
  }

  function askForKey() {
    stopPolling();
    $("key-form").hidden = false;
    $("key-forget").hidden = true;
    $("dashboard").hidden = true;
    $("status").textContent = "Waiting for a key";
    $("key-input").focus();
  }

  function startPolling() {
    $("key-form").hidden = true;
    $("key-forget").hidden = false;
    $("dashboard").hidden = false;
    stopPolling();
    poll();
    state.timer = window.setInterval(poll, intervalS * 1000);
  }

  function stopPolling() {
    if (state.timer !== null) window.clearInterval(state.timer);
    state.timer = null;
  }

  async function problemText(response) {
    try {
      const body = await response.json();
      return body.detail || body.title || response.statusText;
    } catch (_) {
      return response.statusText;
    }
  }

  // -- polling ------------------------------------------------------------------------------------
  async function poll() {
    const key = window.sessionStorage.getItem(KEY_STORE);
    if (!key) { askForKey(); return; }
    if (state.inFlight) return; // a slow answer is still coming: do not pile requests up
    state.inFlight = true;
    const controller = new AbortController();
    const timer = window.setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(`/v1/ops/overview?latest=${latest}`, {
        headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
        cache: "no-store",
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        const why = await problemText(response);
        window.sessionStorage.removeItem(KEY_STORE);
        askForKey();
        showError("auth", response.status === 401
          ? `The key was not accepted (401): ${why}`
          : `The key lacks the ops:read scope (403): ${why}`);
        return;
      }
      if (!response.ok) {
        showError("server", `The API answered ${response.status}: ${await problemText(response)}. ` +
          `Retrying every ${intervalS} s.`);
        return;
      }
      render(await response.json());
      clearError();
      state.polls += 1;
      const status = $("status");
      status.dataset.state = "ok";
      status.dataset.polls = String(state.polls);
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      const why = err && err.name === "AbortError" ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s`
        : String(err && err.message ? err.message : err);
      showError("network", `The API is unreachable (${why}). Retrying every ${intervalS} s.`);
    } finally {
      window.clearTimeout(timer);
      state.inFlight = false;
    }
  }

  // -- rendering ----------------------------------------------------------------------------------
  function render(o) {
    renderHealth(o.health);
    renderThroughput(o.throughput);
    renderLag(o.lag);
    renderDeadLetters(o.dead_letters);
    renderUnregistered(o.unregistered);
    const t = o.throughput;
    const useReadings = t.ingest_readings.total !== null || t.consume_readings.total !== null;
    state.history.push({
      lag: o.lag.totals.lag,
      ingest: useReadings ? t.ingest_readings.per_s : t.kafka_records_in.per_s,
      consume: useReadings ? t.consume_readings.per_s : t.kafka_records_applied.per_s,
    });
    if (state.history.length > HISTORY) state.history.shift();
    const unit = useReadings ? "readings/s" : "records/s";
    $("legend-ingest").textContent = `ingest (${unit})`;
    $("legend-consume").textContent = `consume (${unit})`;
    drawLines($("chart-throughput"), [
      { cls: "ingest", values: state.history.map((h) => h.ingest) },
      { cls: "consume", values: state.history.map((h) => h.consume) },
    ]);
    drawLines($("chart-lag"), [{ cls: "lag", values: state.history.map((h) => h.lag) }]);
  }

  function renderHealth(health) {
    $("health").replaceChildren(...health.map((h) => {
      const li = el("li", null, `health ${h.state}`);
      li.dataset.component = h.name;
      li.dataset.kind = h.kind;
      li.dataset.state = h.state;
      li.append(el("span", h.name, "name"), el("span", h.state, "state"));
      if (h.latency_ms !== null) li.append(el("span", `${Math.round(h.latency_ms)} ms`, "latency"));
      if (h.detail) li.append(el("span", h.detail, "detail"));
      if (h.url) li.title = h.url;
      return li;
    }));
  }

  function renderThroughput(t) {
    const useReadings = t.ingest_readings.total !== null || t.consume_readings.total !== null;
    const ingest = useReadings ? t.ingest_readings : t.kafka_records_in;
    const consume = useReadings ? t.consume_readings : t.kafka_records_applied;
    const unit = useReadings ? "readings/s" : "records/s";
    if (t.window_s !== null) {
      $("throughput-window").textContent = `per second, averaged over the last ${Math.round(t.window_s)} s`;
    }
    setValue("ingest-rate", ingest.per_s, fmtRate);
    setValue("consume-rate", consume.per_s, fmtRate);
    $("ingest-unit").textContent = unit;
    $("consume-unit").textContent = unit;
    setValue("ingest-total", ingest.total, (v) => `${fmtInt(v)} in total`);
    setValue("consume-total", consume.total, (v) => `${fmtInt(v)} in total`);
    const records = $("records-rate");
    const rIn = t.kafka_records_in.per_s;
    const rApplied = t.kafka_records_applied.per_s;
    records.dataset.in = rIn === null ? "" : String(rIn);
    records.dataset.applied = rApplied === null ? "" : String(rApplied);
    records.textContent = `${rIn === null ? "–" : fmtRate(rIn)} / ${rApplied === null ? "–" : fmtRate(rApplied)}`;
  }

  function renderLag(lag) {
    setValue("lag-total", lag.totals.lag, fmtInt);
    setValue("lag-end", lag.totals.end_offset, fmtInt);
    setValue("lag-stored", lag.totals.stored_offset, fmtInt);
    const warning = $("lag-warning");
    warning.hidden = !lag.warning;
    warning.textContent = lag.warning || "";
    const show = (v) => (v === null ? "–" : fmtInt(v));
    fillRows($("lag-table").tBodies[0], lag.partitions.map((p) => [
      p.group_id, p.topic, String(p.partition), show(p.end_offset), show(p.stored_offset), show(p.lag),
      time(p.last_applied_at),
    ]));
  }

  function renderDeadLetters(d) {
    setValue("dlq-counted", d.counted_total, fmtInt);
    setValue("dlq-in-topic", d.in_topic, fmtInt);
    const warning = $("dlq-warning");
    warning.hidden = !d.warning;
    warning.textContent = d.warning || "";
    drawBars($("chart-dead-letters"), d.by_reason.map((r) => ({ label: r.reason, value: r.count })));
    fillRows($("dlq-latest").tBodies[0], d.latest.map((r) => {
      const payload = el("td", r.excerpt, "excerpt");
      const readings = r.rejected_readings
        ? `; rejected readings: ${Object.entries(r.rejected_readings).map(([k, n]) => `${k} ${n}`).join(", ")}`
        : "";
      payload.title = `${r.payload_bytes} bytes; ${r.message}${readings}`;
      const where = el("td", r.device_id || r.origin, "origin");
      where.title = r.origin;
      return [time(r.received_at), r.reason, where, r.component_id || "–", payload];
    }));
  }

  function renderUnregistered(u) {
    setValue("unregistered-count", u.count, fmtInt);
    fillRows($("unregistered-table").tBodies[0], u.latest.map((d) => [
      d.device_id, d.domain, time(d.first_seen), time(d.last_seen),
    ]));
  }

  // -- charts -------------------------------------------------------------------------------------
  function niceMax(value) {
    if (value <= 0) return 2; // an idle chart still gets integer ticks
    const step = 10 ** Math.floor(Math.log10(value));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
    return 10 * step;
  }

  function drawLines(svg, series) {
    const [w, h, left, top, bottom] = [600, 170, 48, 10, 20];
    const known = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
    const max = niceMax(known.length ? Math.max(...known) : 0);
    // A young history fills the chart's first quarter or so, not a sliver at its right edge.
    const longest = Math.max(0, ...series.map((s) => s.values.length));
    const slots = Math.min(HISTORY, Math.max(30, longest));
    const x = (i, n) => left + ((w - left - 4) * (slots - n + i)) / (slots - 1);
    const y = (v) => top + (h - top - bottom) * (1 - v / max);
    const nodes = [];
    for (const frac of [0, 0.5, 1]) {
      nodes.push(svgEl("line", { x1: left, x2: w - 4, y1: y(max * frac), y2: y(max * frac), class: "grid" }));
      const tick = max * frac;
      nodes.push(svgEl("text", { x: left - 6, y: y(tick) + 4, class: "axis" }, Number.isInteger(tick) ? fmtInt(tick) : fmtRate(tick)));
    }
    for (const s of series) {
      // Gaps (no value yet, or a failed poll) break the line instead of drawing a false zero.
      let run = [];
      const flush = () => {
        if (run.length > 1) nodes.push(svgEl("polyline", { points: run.join(" "), class: `line ${s.cls}` }));
        if (run.length === 1) {
          const [cx, cy] = run[0].split(",");
          nodes.push(svgEl("circle", { cx, cy, r: 2, class: `dot ${s.cls}` }));
        }
        run = [];
      };
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) flush();
        else run.push(`${x(i, s.values.length).toFixed(1)},${y(v).toFixed(1)}`);
      });
      flush();
    }
    svg.replaceChildren(...nodes);
    svg.dataset.points = String(series.length ? series[0].values.length : 0);
  }

  function drawBars(svg, items) {
    const [w, row, left] = [600, 22, 170];
    const h = Math.max(1, items.length) * row + 8;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const max = Math.max(1, ...items.map((i) => i.value));
    const nodes = items.length ? [] : [svgEl("text", { x: 4, y: 18, class: "axis start" }, "none counted")];
    items.forEach((item, i) => {
      const width = ((w - left - 60) * item.value) / max;
      const yTop = 4 + i * row;
      nodes.push(svgEl("text", { x: left - 6, y: yTop + 14, class: "axis" }, item.label));
      const bar = svgEl("rect", { x: left, y: yTop + 2, width: Math.max(1, width), height: row - 6, class: "bar" });
      bar.dataset.reason = item.label;
      bar.dataset.count = String(item.value);
      nodes.push(bar);
      nodes.push(svgEl("text", { x: left + width + 6, y: yTop + 14, class: "axis start" }, fmtInt(item.value)));
    });
    svg.replaceChildren(...nodes);
    svg.dataset.bars = String(items.length);
  }

  // -- start --------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("interval").textContent = String(intervalS);
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault(); // the key never goes into a URL or a form submission
      const key = $("key-input").value.trim();
      if (!key) return;
      window.sessionStorage.setItem(KEY_STORE, key);
      $("key-input").value = "";
      $("status").textContent = "Connecting…";
      startPolling();
    });
    $("key-forget").addEventListener("click", () => {
      window.sessionStorage.removeItem(KEY_STORE);
      clearError();
      askForKey();
    });
    if (window.sessionStorage.getItem(KEY_STORE)) startPolling();
    else askForKey();
  });
})();
