// Time-series charts with uPlot: an average line per series and its min/max band.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { COLORS, cssVar, fmtValue } from "./lib.js";

function alpha(color, a) {
  // CSS colours from our variables are #rrggbb.
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1], 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${a})`;
}

// `series`: [{label, t: [ms], avg: [], min: [], max: []}] (the API's shape, any buckets).
// Returns the uPlot instance; the container gets data-points = the number of points drawn.
export function drawChart(el, series, { unit = "", height = 240 } = {}) {
  const times = [...new Set(series.flatMap((s) => s.t))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const data = [times.map((t) => t / 1000)];
  const opts = {
    width: Math.max(280, el.clientWidth || 600),
    height,
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
    scales: { x: { time: true } },
    axes: [
      { stroke: cssVar("--muted"), grid: { stroke: cssVar("--line"), width: 1 }, ticks: { stroke: cssVar("--line") } },
      {
        stroke: cssVar("--muted"),
        grid: { stroke: cssVar("--line"), width: 1 },
        ticks: { stroke: cssVar("--line") },
        values: (u, vals) => vals.map((v) => fmtValue(v) + (unit ? ` ${unit}` : "")),
        size: 64,
      },
    ],
    series: [{}],
    bands: [],
  };
  const band = parseFloat(cssVar("--band")) || 0.16;
  series.forEach((s, i) => {
    const color = cssVar(COLORS[i % COLORS.length]);
    const col = (key) => {
      const arr = new Array(times.length).fill(null);
      s.t.forEach((t, j) => (arr[index.get(t)] = s[key][j]));
      return arr;
    };
    const base = data.length;
    data.push(col("max"), col("min"), col("avg"));
    opts.series.push(
      { label: `${s.label} max`, stroke: "transparent", points: { show: false }, value: (u, v) => fmtValue(v), show: true },
      { label: `${s.label} min`, stroke: "transparent", points: { show: false }, value: (u, v) => fmtValue(v) },
      { label: s.label, stroke: color, width: 2, spanGaps: false, points: { show: s.t.length < 60, size: 4 }, value: (u, v) => fmtValue(v) },
    );
    opts.bands.push({ series: [base, base + 1], fill: alpha(color, band) });
  });
  el.innerHTML = "";
  const plot = new uPlot(opts, data, el);
  // Hide the band edges from the legend: the band itself says enough.
  el.querySelectorAll(".u-legend tr").forEach((tr, i) => {
    if (i > 0 && (i - 1) % 3 !== 2) tr.style.display = "none";
  });
  el.dataset.points = String(series.reduce((n, s) => n + s.t.length, 0));
  const ro = new ResizeObserver(() => plot.setSize({ width: Math.max(280, el.clientWidth), height }));
  ro.observe(el);
  plot.roost = { ro, times, series };
  return plot;
}

export function destroyChart(plot) {
  if (!plot) return;
  plot.roost?.ro.disconnect();
  plot.destroy();
}
