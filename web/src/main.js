// Roost dashboard: overview (#/), node detail (#/node/<id>), gateway health (#/health).
// Data comes from /api; new readings arrive pushed over /ws/live.
import "./style.css";
import { drawChart, destroyChart } from "./chart.js";
import { COLORS, HttpError, Live, ago, api, bytes, esc, fmtValue, hourBars, metricLabel, sparkline, token } from "./lib.js";

const app = document.getElementById("app");
const liveBadge = document.getElementById("live");
let page = null; // the current page's cleanup

function setLive(on) {
  // null: this page has no live feed.
  liveBadge.className = `live ${on === null ? "" : on ? "on" : "off"}`;
  liveBadge.querySelector("span").textContent = on === null ? "" : on ? "live" : "reconnecting";
}

function showError(err, retry) {
  if (err instanceof HttpError && err.status === 401) {
    app.innerHTML = `<div class="card" style="max-width:28rem;margin:2rem auto">
      <h1>Token needed</h1><p class="muted">This gateway has read auth on. Paste a read or admin token.</p>
      <form class="row" id="tok"><input name="t" type="password" autocomplete="off" placeholder="token" style="flex:1"><button class="btn">Use</button></form></div>`;
    app.querySelector("#tok").onsubmit = (e) => {
      e.preventDefault();
      token.set(e.target.t.value.trim());
      retry();
    };
    return;
  }
  app.innerHTML = `<div class="empty err">Cannot reach the gateway: ${esc(err.message)}. Retrying…</div>`;
  const timer = setTimeout(retry, 3000);
  page = { close: () => clearTimeout(timer) };
}

// -- overview -------------------------------------------------------------------------------

const SPARK_WINDOW = 3600_000;

function metricRow(nodeId, name, latest, pts, color) {
  const { label, unit } = metricLabel(name);
  return `<div class="metric" data-metric="${esc(name)}">
    <div><div class="name">${esc(label)}</div>
    <div class="value"><span data-value>${fmtValue(latest?.value)}</span><small>${esc(unit)}</small></div></div>
    <div data-spark>${sparkline(pts, color)}</div></div>`;
}

function nodeCard(n, spark) {
  const names = Object.keys(n.latest);
  const c = n.completeness;
  const rows = names
    .map((m, i) => metricRow(n.node_id, m, n.latest[m], spark.get(`${n.node_id}\u0000${m}`), `var(${COLORS[i % COLORS.length]})`))
    .join("");
  return `<a class="card node" href="#/node/${encodeURIComponent(n.node_id)}" data-node="${esc(n.node_id)}">
    <div class="card-head"><span class="pill ${n.status}">${n.status.replace("_", " ")}</span><b>${esc(n.node_id)}</b>
      <span class="meta">${esc(n.board || "")}${n.fw ? " · " + esc(n.fw) : ""}</span></div>
    <div class="metrics">${rows || '<div class="muted">no readings yet</div>'}</div>
    <div class="foot"><span title="messages received / sent (seq) over 24 h">${c.pct === null ? "–" : c.pct + " %"}</span>
      ${hourBars(c.hourly, 24)}<span data-seen="${n.last_seen}">${ago(n.last_seen)}</span></div></a>`;
}

async function overview() {
  const now = Date.now();
  const [nodes, series] = await Promise.all([
    api("/api/nodes"),
    api(`/api/series?start=${now - SPARK_WINDOW}&end=${now + 60_000}&points=60`),
  ]);
  const spark = new Map(series.series.map((s) => [`${s.node}\u0000${s.metric}`, s.t.map((t, i) => [t, s.avg[i]])]));
  const online = nodes.filter((n) => n.status === "online").length;
  app.innerHTML = `<h1>Nodes <span class="pill online">${online} online</span>
      <span class="muted" style="font-size:.85rem;font-weight:400">${nodes.length} known</span></h1>
    <div class="grid" id="cards">${nodes.map((n) => nodeCard(n, spark)).join("") || '<div class="empty">No node has sent anything yet.</div>'}</div>`;
  const known = new Set(nodes.map((n) => n.node_id));
  let refetch = null;
  const live = new Live({ backfill: "0" }, (frame) => {
    if (frame.type !== "readings") return;
    for (const m of frame.data) {
      const card = app.querySelector(`.card[data-node="${CSS.escape(m.node)}"]`);
      if (!card || !known.has(m.node)) {
        // A new node or metric: draw the page again, at most once a few seconds.
        refetch ||= setTimeout(() => route(), 3000);
        continue;
      }
      for (const [name, value] of Object.entries(m.metrics)) {
        const row = card.querySelector(`.metric[data-metric="${CSS.escape(name)}"]`);
        if (!row) { refetch ||= setTimeout(() => route(), 3000); continue; }
        const v = row.querySelector("[data-value]");
        v.textContent = fmtValue(value);
        v.classList.remove("flash"); void v.offsetWidth; v.classList.add("flash");
        const key = `${m.node}\u0000${name}`;
        const pts = spark.get(key) || [];
        pts.push([m.ts, value]);
        while (pts.length && pts[0][0] < Date.now() - SPARK_WINDOW) pts.shift();
        spark.set(key, pts);
        const i = [...card.querySelectorAll(".metric")].indexOf(row);
        row.querySelector("[data-spark]").innerHTML = sparkline(pts.length > 240 ? pts.filter((_, j) => j % Math.ceil(pts.length / 240) === 0 || j === pts.length - 1) : pts, `var(${COLORS[i % COLORS.length]})`);
      }
      const seen = card.querySelector("[data-seen]");
      seen.dataset.seen = m.received;
      seen.textContent = ago(m.received);
      const pill = card.querySelector(".pill");
      if (pill.classList.contains("stale") || pill.classList.contains("unknown")) {
        pill.className = "pill online";
        pill.textContent = "online";
      }
    }
  }, setLive);
  const tick = setInterval(() => app.querySelectorAll("[data-seen]").forEach((e) => (e.textContent = ago(+e.dataset.seen))), 5000);
  return { close: () => { live.close(); clearInterval(tick); clearTimeout(refetch); } };
}

// -- node detail ------------------------------------------------------------------------------

const RANGES = [["15m", 900e3], ["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 864e5], ["7d", 7 * 864e5], ["30d", 30 * 864e5]];

async function nodePage(nodeId) {
  const [node, all] = await Promise.all([api(`/api/nodes/${encodeURIComponent(nodeId)}`), api("/api/nodes")]);
  const state = { range: sessionStorage.getItem("roost.range") || "1h", compare: new Set() };
  const metrics = Object.keys(node.latest);
  const others = all.map((n) => n.node_id).filter((id) => id !== nodeId);
  const c = node.completeness;
  app.innerHTML = `<h1><a href="#/">Nodes</a> / ${esc(nodeId)} <span class="pill ${node.status}">${node.status.replace("_", " ")}</span></h1>
    <div class="chips" id="ranges">${RANGES.map(([k]) => `<button data-range="${k}">${k}</button>`).join("")}
      ${others.length ? `<span class="muted" style="margin-left:.6rem">compare</span>${others.map((o) => `<button data-compare="${esc(o)}">${esc(o)}</button>`).join("")}` : ""}</div>
    <div class="two"><div id="charts">${metrics.map((m) => `<div class="card chart-card"><h2>${esc(metricLabel(m).label)} <span class="legend-note">${esc(metricLabel(m).unit)} · line avg, band min–max</span></h2><div class="chart" data-chart="${esc(m)}"></div></div>`).join("") || '<div class="card empty">No readings yet.</div>'}</div>
    <div><div class="card"><h2>Node</h2><dl class="kv">
      <dt>status</dt><dd>${esc(node.status)}</dd><dt>last seen</dt><dd>${ago(node.last_seen)}</dd>
      <dt>board</dt><dd>${esc(node.board || "–")}</dd><dt>firmware</dt><dd>${esc(node.fw || "–")}</dd>
      <dt>boot</dt><dd>${node.boot ?? "–"}</dd><dt>IP</dt><dd>${esc(node.ip || "–")}</dd>
      <dt>Wi-Fi</dt><dd>${node.rssi != null ? node.rssi + " dBm" : "–"}</dd><dt>free RAM</dt><dd>${node.mem_free != null ? bytes(node.mem_free) : "–"}</dd>
      <dt>messages</dt><dd>${node.messages.toLocaleString()}</dd><dt>lost</dt><dd>${node.lost.toLocaleString()}</dd>
      <dt>complete 24 h</dt><dd>${c.pct === null ? "–" : c.pct + " %"}</dd></dl>
      <div class="foot">${hourBars(c.hourly, 24)}</div></div>
      <div class="card" style="margin-top:1rem" id="cmds"><h2>Commands <span class="legend-note">admin</span></h2>
      <div class="row"><input id="tok" type="password" placeholder="admin token" autocomplete="off" style="flex:1" value="${esc(token.get())}"></div>
      <div class="row"><button class="btn" data-op="identify">Identify</button><button class="btn danger" data-op="reboot">Reboot</button></div>
      <form class="row" id="setint"><input name="s" type="number" min="1" max="86400" placeholder="seconds" style="width:7rem"><button class="btn">Set interval</button></form>
      <div id="cmd-out" class="muted" style="font-size:.85rem"></div><div id="cmd-list"></div></div></div></div>`;

  const plots = new Map();
  const local = new Map(); // metric -> series in API shape, appended to live
  let redraw = null;
  const spanMs = () => RANGES.find(([k]) => k === state.range)[1];

  async function load() {
    app.querySelectorAll("[data-range]").forEach((b) => b.classList.toggle("on", b.dataset.range === state.range));
    app.querySelectorAll("[data-compare]").forEach((b) => b.classList.toggle("on", state.compare.has(b.dataset.compare)));
    const now = Date.now();
    const nodes = [nodeId, ...state.compare];
    const q = new URLSearchParams({ start: String(now - spanMs()), end: String(now + 60_000), points: "400" });
    nodes.forEach((n) => q.append("node", n));
    metrics.forEach((m) => q.append("metric", m));
    const res = await api(`/api/series?${q}`);
    local.clear();
    for (const m of metrics) {
      local.set(m, nodes.map((n) => {
        const s = res.series.find((x) => x.node === n && x.metric === m);
        return { label: n, node: n, t: s ? [...s.t] : [], avg: s ? [...s.avg] : [], min: s ? [...s.min] : [], max: s ? [...s.max] : [] };
      }));
    }
    draw();
  }
  function draw() {
    redraw = null;
    for (const m of metrics) {
      const el = app.querySelector(`[data-chart="${CSS.escape(m)}"]`);
      destroyChart(plots.get(m));
      plots.set(m, drawChart(el, local.get(m), { unit: metricLabel(m).unit }));
    }
  }
  app.querySelector("#ranges").onclick = (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    if (b.dataset.range) { state.range = b.dataset.range; sessionStorage.setItem("roost.range", state.range); }
    if (b.dataset.compare) {
      const id = b.dataset.compare;
      state.compare.has(id) ? state.compare.delete(id) : state.compare.add(id);
      live.close();
      live = subscribe();
    }
    load().catch((err) => console.error(err));
  };

  const subscribe = () => new Live({ node: [nodeId, ...state.compare].join(","), backfill: "0" }, (frame) => {
    if (frame.type !== "readings" || spanMs() > 864e5) return;
    for (const m of frame.data) {
      for (const [name, v] of Object.entries(m.metrics)) {
        const s = local.get(name)?.find((x) => x.node === m.node);
        if (!s) continue;
        s.t.push(m.ts); s.avg.push(v); s.min.push(v); s.max.push(v);
      }
    }
    redraw ||= setTimeout(draw, 1000);
  }, setLive);
  let live = subscribe();

  // Commands (admin token in this browser only).
  const out = app.querySelector("#cmd-out");
  async function listCommands() {
    const rows = await api(`/api/nodes/${encodeURIComponent(nodeId)}/commands?limit=5`);
    app.querySelector("#cmd-list").innerHTML = rows.length
      ? `<table><tr><th>op</th><th>sent</th><th>ack</th></tr>${rows.map((r) => `<tr><td>${esc(r.op || "?")}</td><td>${ago(r.sent_at || r.acked_at)}</td><td>${r.ok === null ? "…" : r.ok ? "✓" : "✗ " + esc(r.error || "")}</td></tr>`).join("")}</table>`
      : "";
  }
  async function send(body) {
    const t = app.querySelector("#tok").value.trim();
    if (!t) { out.textContent = "Enter the admin token first."; return; }
    token.set(t);
    try {
      const r = await api(`/api/nodes/${encodeURIComponent(nodeId)}/commands`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      out.textContent = `sent ${r.op} (${r.id})`;
      setTimeout(() => listCommands().catch(() => {}), 1500);
    } catch (err) {
      out.innerHTML = `<span class="err">${esc(err.message)}</span>`;
    }
  }
  app.querySelectorAll("[data-op]").forEach((b) => (b.onclick = () => send({ op: b.dataset.op })));
  app.querySelector("#setint").onsubmit = (e) => { e.preventDefault(); send({ op: "set", interval_s: Number(e.target.s.value) }); };
  listCommands().catch(() => {});
  await load();
  return { close: () => { live.close(); clearTimeout(redraw); plots.forEach(destroyChart); } };
}

// -- health ------------------------------------------------------------------------------------

async function health() {
  async function render() {
    const [st, q, hres] = await Promise.all([
      api("/api/stats"), api("/api/quarantine?limit=20"),
      fetch("/api/health").then((r) => r.json()),
    ]);
    const ing = st.ingest, s = st.store, d = st.disk;
    const usedPct = Math.round((100 * (d.total_bytes - d.free_bytes)) / d.total_bytes);
    const ok = (b) => `<span class="pill ${b ? "online" : "offline"}">${b ? "ok" : "down"}</span>`;
    const hist = ing.history.map(([t, v]) => [t, v]);
    app.innerHTML = `<h1>Gateway health <span class="pill ${hres.status === "ok" ? "online" : "offline"}">${esc(hres.status)}</span></h1>
    <div class="tiles">
      <div class="card tile" data-tile="rate"><h2>Ingest rate</h2><div class="big">${fmtValue(ing.rate_messages_s)}<small class="sub"> msg/s</small></div>
        <div class="sub">${fmtValue(ing.rate_rows_s)} readings/s · last hour:</div>${sparkline(hist, "var(--accent)", 200, 46)}</div>
      <div class="card tile"><h2>Broker</h2><div class="big">${ok(ing.connected)}</div><div class="sub">${ing.connected ? "since " + ago(ing.since * 1000) : esc(ing.last_error || "")}</div>
        <h2 style="margin-top:.6rem">Store</h2><div>${ok(hres.store_writable)}</div><div class="sub">${s.commit_errors} commit errors · queue ${s.queue_units}</div></div>
      <div class="card tile"><h2>Stored</h2><div class="big">${s.stored.toLocaleString()}</div>
        <div class="sub">${s.rows.toLocaleString()} readings · ${s.nodes} nodes</div>
        <div class="sub">${s.duplicates.toLocaleString()} duplicates · ${s.seq_gaps.toLocaleString()} lost (seq gaps)</div></div>
      <div class="card tile"><h2>Disk</h2><div class="big">${bytes(d.free_bytes)}<small class="sub"> free</small></div>
        <div class="bar"><i class="${usedPct > 85 ? "hot" : ""}" style="width:${usedPct}%"></i></div>
        <div class="sub">${usedPct} % used · store ${bytes(d.store_bytes)}</div></div>
      <div class="card tile" data-tile="budget"><h2>Disk budget</h2><div class="big">${st.budget && st.budget.paused ? '<span class="pill offline">ingest paused</span>' : '<span class="pill online">ok</span>'}</div>
        <div class="sub">data ${bytes(st.budget ? st.budget.data_bytes : 0)}${st.budget && st.budget.max_bytes ? " of " + bytes(st.budget.max_bytes) : ""} · ${st.budget ? st.budget.pauses : 0} pauses · ${st.budget ? st.budget.dropped_hours : 0} hours dropped</div></div>
      <div class="card tile"><h2>Quarantine</h2><div class="big">${s.quarantined.toLocaleString()}</div><div class="sub">bad inputs kept with their reason</div></div>
      <div class="card tile"><h2>Live clients</h2><div class="big">${st.live.clients}</div><div class="sub">${st.live.frames_dropped} frames dropped · policy ${esc(st.live.policy)}</div></div>
    </div>
    ${!st.sinks.length ? '<div class="card" style="margin-bottom:1rem" data-sinks="none"><h2>Upstream sync</h2><div class="muted">No sink configured: readings stay on this gateway.</div></div>' : ""}
    ${st.sinks.length ? `<div class="card" style="margin-bottom:1rem" data-sinks><h2>Upstream sync</h2><table><tr><th>sink</th><th>state</th><th>backlog</th><th>delivered</th><th>dead letters</th></tr>
      ${st.sinks.map((k) => `<tr data-sink="${esc(k.name)}"><td>${esc(k.name)} <span class="muted">${esc(k.type)}</span></td><td><span class="pill ${k.state === "online" ? "online" : k.state === "backoff" ? "stale" : "offline"}">${esc(k.state || "?")}</span> <span class="muted">${esc(k.last_error || "")}</span></td><td>${k.backlog.toLocaleString()}</td><td>${k.delivered.toLocaleString()}</td><td>${k.dead_letters}</td></tr>`).join("")}</table></div>` : ""}
    <div class="card"><h2>Latest quarantined inputs</h2>${q.length ? `<table><tr><th>when</th><th>topic</th><th>reason</th><th>payload</th></tr>
      ${q.map((r) => `<tr><td>${ago(r.received)}</td><td><code>${esc(r.topic)}</code></td><td>${esc(r.reason)}</td><td><code>${esc(r.raw.slice(0, 120))}</code></td></tr>`).join("")}</table>` : '<div class="muted">Nothing quarantined.</div>'}</div>`;
  }
  await render();
  const timer = setInterval(() => render().catch(() => {}), 5000);
  // Health figures are totals and rates, refreshed every few seconds; node data is pushed.
  return { close: () => clearInterval(timer) };
}

// -- router ----------------------------------------------------------------------------------

async function route() {
  if (page) page.close();
  page = null;
  setLive(null);
  const hash = location.hash || "#/";
  document.querySelectorAll("[data-nav]").forEach((a) =>
    a.classList.toggle("on", (a.dataset.nav === "health") === hash.startsWith("#/health")));
  try {
    if (hash.startsWith("#/node/")) page = await nodePage(decodeURIComponent(hash.slice(7)));
    else if (hash.startsWith("#/health")) page = await health();
    else page = await overview();
  } catch (err) {
    console.error(err);
    showError(err, route);
  }
}

// -- alerts on every page ------------------------------------------------------------------------
// States a person must not miss whatever page is open: ingest paused by the disk budget, a
// refused first-boot configuration, an upstream sink that is not delivering.

function alertsHtml(st) {
  const out = [];
  const b = st.budget;
  if (b && b.paused) {
    out.push(`<div class="banner bad" data-alert="budget" role="alert"><b>Ingest paused: disk budget reached</b>
      <span>${b.paused_since ? "since " + ago(b.paused_since) : ""}${b.reason ? " · " + esc(b.reason) : ""}.</span>
      <span class="muted">Nothing new is stored or acknowledged; the broker and the nodes keep the readings. Free space or raise <code>budget.max_bytes</code> / lower <code>budget.min_free_bytes</code>: ingest resumes by itself.</span></div>`);
  }
  if (st.firstboot_error) {
    out.push(`<div class="banner bad" data-alert="firstboot" role="alert"><b>First-boot configuration refused</b>
      <pre>${esc(st.firstboot_error)}</pre>
      <span class="muted">Nothing in it was applied: the gateway runs on its previous settings. Fix <code>roost.toml</code>, put it on the SD card's boot partition again and reboot.</span></div>`);
  }
  const sick = (st.sinks || []).filter((k) => k.enabled !== false && k.state && k.state !== "online");
  if (sick.length) {
    out.push(`<div class="banner warn" data-alert="sync"><b>Upstream sync</b>
      ${sick.map((k) => `<span><code>${esc(k.name)}</code> ${esc(k.state)}${k.backlog ? ", " + k.backlog.toLocaleString() + " waiting" : ""}${k.last_error ? ": " + esc(k.last_error) : ""}</span>`).join(" · ")}
      <a href="#/health">details</a></div>`);
  }
  return out.join("");
}

const alerts = document.getElementById("alerts");
async function refreshAlerts() {
  try {
    const st = await api("/api/stats");
    document.getElementById("gw-name").textContent = st.gateway;
    alerts.innerHTML = alertsHtml(st);
  } catch {
    // The page itself shows why the gateway cannot be reached.
  }
}

refreshAlerts();
setInterval(refreshAlerts, 10_000);
window.addEventListener("hashchange", () => {
  refreshAlerts();
  route();
});
route();
