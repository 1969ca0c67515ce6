// Talking to the gateway (REST and the live WebSocket), formatting, and small SVG pictures.

const TOKEN_KEY = "roost.token";

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) || "",
  set: (t) => (t ? localStorage.setItem(TOKEN_KEY, t) : localStorage.removeItem(TOKEN_KEY)),
};

export class HttpError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export async function api(path, opts = {}) {
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  const res = await fetch(path, { ...opts, headers });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new HttpError(res.status, body && body.detail);
  return body;
}

// The live feed: reconnects on its own with backoff; `onFrame` gets every parsed frame.
export class Live {
  constructor(params, onFrame, onState) {
    this.params = params;
    this.onFrame = onFrame;
    this.onState = onState || (() => {});
    this.delay = 1000;
    this.closed = false;
    this.connect();
  }
  connect() {
    if (this.closed) return;
    const q = new URLSearchParams(this.params);
    const t = token.get();
    if (t) q.set("token", t);
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = (this.ws = new WebSocket(`${proto}://${location.host}/ws/live?${q}`));
    ws.onopen = () => {
      this.delay = 1000;
      this.onState(true);
    };
    ws.onmessage = (ev) => {
      try {
        this.onFrame(JSON.parse(ev.data));
      } catch (e) {
        console.error("bad frame", e);
      }
    };
    ws.onclose = () => {
      // A feed closed on purpose (the page changed) is not "reconnecting": say nothing.
      if (this.closed) return;
      this.onState(false);
      this.timer = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 15000);
    };
  }
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  }
}

// Metric names end in their unit (docs/mqtt.md): show the unit, not the suffix.
const UNITS = { c: "°C", pct: "%", hpa: "hPa", cm: "cm", mm: "mm", v: "V", mv: "mV", lux: "lx", ppm: "ppm", dbm: "dBm" };
export function metricLabel(name) {
  const parts = name.split("_");
  const unit = UNITS[parts[parts.length - 1]];
  const base = unit ? parts.slice(0, -1) : parts;
  const words = base.join(" ").replace(/\brh\b/, "humidity").replace(/\btemp\b/, "temperature");
  return { label: words.charAt(0).toUpperCase() + words.slice(1), unit: unit || "" };
}

export function fmtValue(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(a >= 10 ? 1 : 2);
}

export function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function bytes(n) {
  const u = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${u[i]}`;
}

export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export const COLORS = ["--s1", "--s2", "--s3", "--s4", "--s5", "--s6"];
export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// A sparkline: a line with a soft fill under it. `pts` is [[t, v], ...].
export function sparkline(pts, color = "var(--accent)", w = 120, h = 34) {
  if (!pts || pts.length < 2) return `<svg viewBox="0 0 ${w} ${h}" data-points="${pts ? pts.length : 0}"></svg>`;
  const ts = pts.map((p) => p[0]);
  const vs = pts.map((p) => p[1]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts);
  let lo = Math.min(...vs), hi = Math.max(...vs);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const x = (t) => ((t - t0) / (t1 - t0 || 1)) * (w - 2) + 1;
  const y = (v) => h - 2 - ((v - lo) / (hi - lo)) * (h - 4);
  const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
  const area = `${d}L${x(t1).toFixed(1)},${h}L${x(t0).toFixed(1)},${h}Z`;
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" data-points="${pts.length}">
    <path d="${area}" fill="${color}" opacity=".13"/>
    <path d="${d}" fill="none" stroke="${color}" stroke-width="1.6" vector-effect="non-scaling-stroke" stroke-linejoin="round"/>
  </svg>`;
}

// Completeness per hour as a strip of bars: full height is 100 %; missing hours are faint.
export function hourBars(hourly, hours = 24) {
  const byHour = new Map(hourly.map((h) => [h.hour, h.pct]));
  const now = Math.floor(Date.now() / 3600000) * 3600000;
  const w = 96, h = 16, bw = w / hours;
  let out = "";
  for (let i = 0; i < hours; i++) {
    const hour = now - (hours - 1 - i) * 3600000;
    const pct = byHour.get(hour);
    const color = pct === undefined ? "var(--line)" : pct >= 99 ? "var(--ok)" : pct >= 90 ? "var(--warn)" : "var(--bad)";
    const bh = pct === undefined ? 2 : Math.max(2, (pct / 100) * h);
    out += `<rect x="${(i * bw + 0.3).toFixed(2)}" y="${(h - bh).toFixed(2)}" width="${(bw - 0.6).toFixed(2)}" height="${bh.toFixed(2)}" rx="0.6" fill="${color}"><title>${new Date(hour).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${pct === undefined ? "no data" : pct + " %"}</title></rect>`;
  }
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" aria-label="completeness per hour">${out}</svg>`;
}
