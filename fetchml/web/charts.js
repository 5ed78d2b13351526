// #/charts/<id,id,...>: one panel per metric name across the selected runs, and their
// params side by side. A run's history is read as: metrics_count N (LIST_RUNS), then the
// downsampled history (QUERY_METRICS max_points), then WATCH_METRICS from N, so points
// may overlap but never go missing; a dropped watch resumes from its last `next`.

import uPlot from "./vendor/uPlot.esm.js";
import { decodeMetrics } from "./codec.js";
import { Conn, ServerError, Watch } from "./conn.js";
import { fmtValue, h } from "./dom.js";
import { nameOf } from "./runs.js";

export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const DRAW_EVERY_MS = 100; // live data is drawn at most this often

const view = { xMode: "step", logY: false, smooth: 0 };

/** Exponential moving average (weight `alpha` on the past), non-finite values skipped. */
export function ema(values, alpha) {
  if (!alpha) return values;
  const out = new Array(values.length);
  let last = null;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined || !Number.isFinite(v)) { out[i] = v; continue; }
    last = last === null ? v : alpha * last + (1 - alpha) * v;
    out[i] = last;
  }
  return out;
}

/** Append live points; beyond `keep` points the older half is thinned to every other one. */
function appendColumns(target, cols, keep) {
  for (let i = 0; i < cols.t.length; i++) {
    target.t.push(cols.t[i]);
    target.step.push(cols.step[i]);
    target.value.push(cols.value[i]);
  }
  if (target.t.length > keep) {
    // Thin the older half, keep the newer half whole.
    const half = target.t.length >> 1;
    for (const key of ["t", "step", "value"]) {
      const col = target[key];
      target[key] = col.slice(0, half).filter((_, i) => i % 2 === 0).concat(col.slice(half));
    }
  }
}

export function chartsView(root, app, chosen) {
  const unique = [...new Set(chosen)];
  const ids = unique.slice(0, COLORS.length);
  const state = { runs: [], panels: new Map(), stopped: false, frame: 0, timer: 0, drawn: 0 };
  const debug = (window.__fetchml.charts = { panels: state.panels, runs: state.runs, waiters: new Map(), seen: {}, drawMs: [], renderMs: [] });
  /** The uPlot data arrays of the panel of `name` (for tests and benches). */
  debug.data = (name) => state.panels.get(name)?.u?.data.map((a) => Array.from(a)) ?? null;
  debug.labels = (name) => state.panels.get(name)?.u?.series.slice(1).map((s) => s.label) ?? null;
  /** Note when `value` of metric `name` arrives live and then when it is drawn: seen[value]. */
  debug.watchFor = (name, value) => debug.waiters.set(value, { name, arrived: false });

  const xSelect = h("select", { id: "x-axis", onchange: () => { view.xMode = xSelect.value; rebuildAll(); } },
    h("option", { value: "step" }, "step"), h("option", { value: "time" }, "time"));
  xSelect.value = view.xMode;
  const logBox = h("input", { type: "checkbox", id: "log-y", checked: view.logY, onchange: () => { view.logY = logBox.checked; rebuildAll(); } });
  const smoothLabel = h("span", {}, String(view.smooth));
  const smoothInput = h("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", value: String(view.smooth),
    oninput: () => { view.smooth = Number(smoothInput.value); smoothLabel.textContent = smoothInput.value; markAll(); } });
  const status = h("p", { id: "charts-status", class: "notice" }, "loading…");
  const compare = h("div", { id: "compare" });
  const grid = h("div", { id: "panels", class: "panels" });
  root.append(
    h("h1", {}, "Charts ", h("a", { href: "#/runs", class: "small" }, "back to runs")),
    h("div", { class: "filters" },
      h("label", {}, "x axis ", xSelect), h("label", {}, logBox, " log y"),
      h("label", {}, "smoothing ", smoothInput, " ", smoothLabel),
      h("span", { class: "muted" }, "drag to zoom, double-click to reset")),
    status, grid, h("h2", {}, "Compare"), compare);

  if (!ids.length) {
    status.textContent = "no runs selected: pick some in the runs table";
    return { stop() {} };
  }

  // Two panels a row: each less the gap (1em), its border and padding, and room for a scroll bar.
  const panelWidth = () => Math.max(300, Math.min(900, Math.floor(((grid.clientWidth || 900) - 16) / 2) - 30));
  const maxPoints = () => 2 * panelWidth();

  async function query(run, fields, conn = null) {
    const response = await app.call("queryMetrics", { commit: run.id, ...fields }, conn);
    return decodeMetrics(response.payload);
  }

  /** Each run's history on a connection of its own: requests on one connection run one
   * after another, so this lets the daemon read several runs at once. */
  async function loadRun(id, index) {
    const conn = await Conn.open(app.session);
    try {
      await readRun(id, index, conn);
    } finally {
      conn.close();
    }
  }

  async function readRun(id, index, conn) {
    const page = await app.json("listRuns", { filter: { id, limit: 1 } }, conn);
    const summary = page.runs.find((s) => s.id === id);
    if (!summary) throw new Error(`run ${id.slice(0, 12)} not found`);
    const run = { id, summary, name: nameOf(summary), color: COLORS[index % COLORS.length], series: new Map(), watch: null, live: "" };
    state.runs[index] = run;
    const count = summary.metrics_count;
    if (count > 0) {
      try {
        // Every name's downsampled history in one answer...
        for (const [name, cols] of (await query(run, { maxPoints: maxPoints() }, conn)).names) run.series.set(name, cols);
      } catch (error) {
        if (!(error instanceof ServerError && error.codeName === "INVALID_REQUEST")) throw error;
        // ...or, when that is too many points for one message, name by name.
        const names = [...(await query(run, { maxPoints: 1 }, conn)).names.keys()];
        await Promise.all(names.map(async (name) => {
          const cols = (await query(run, { name, maxPoints: maxPoints() }, conn)).names.get(name);
          if (cols) run.series.set(name, cols);
        }));
      }
    }
    if (state.stopped) return;
    run.watch = new Watch(app.session, id, count, (push) => {
      for (const [name, cols] of push.names) {
        if (!run.series.has(name)) run.series.set(name, { t: [], step: [], value: [] });
        appendColumns(run.series.get(name), cols, 4 * maxPoints());
        for (const value of cols.value) {
          const w = debug.waiters.get(value);
          if (w && w.name === name) w.arrived = true;
        }
        mark(name);
      }
    }, (s) => { run.live = s; showStatus(); });
    for (const name of run.series.keys()) mark(name);
  }

  function showStatus() {
    const live = state.runs.filter((r) => r && r.live === "live").length;
    status.textContent = `${state.runs.filter(Boolean).length} runs, ${state.panels.size} metrics; ${live} live`;
  }

  function mark(name) {
    if (!state.panels.has(name)) {
      state.panels.set(name, { name, u: null, key: "", dirty: true, detail: null, el: h("div", { class: "panel", "data-metric": name }) });
      const sortedNames = [...state.panels.keys()].sort();
      grid.replaceChildren(...sortedNames.map((n) => state.panels.get(n).el));
    }
    state.panels.get(name).dirty = true;
    schedule();
  }

  function markAll() {
    for (const p of state.panels.values()) p.dirty = true;
    schedule();
  }

  function rebuildAll() {
    for (const p of state.panels.values()) { p.key = ""; p.detail = null; p.dirty = true; }
    schedule();
  }

  function schedule() {
    if (state.frame || state.timer || state.stopped) return;
    const wait = state.drawn + DRAW_EVERY_MS - performance.now();
    if (wait <= 0) state.frame = requestAnimationFrame(draw);
    else state.timer = setTimeout(() => { state.timer = 0; schedule(); }, wait);
  }

  function tablesOf(panel) {
    const runs = state.runs.filter((r) => r && r.series.has(panel.name));
    const tables = runs.map((run) => {
      const cols = panel.detail?.get(run.id) ?? run.series.get(panel.name);
      const xs = view.xMode === "step" ? cols.step : cols.t;
      let ys = ema(cols.value, view.smooth);
      ys = ys.map((v) => (!Number.isFinite(v) || (view.logY && v <= 0) ? null : v));
      return [xs, ys];
    });
    return { runs, tables };
  }

  function draw() {
    state.frame = 0;
    state.drawn = performance.now();
    if (state.stopped) return;
    try {
      drawPanels();
    } finally {
      debug.drawMs.push(performance.now() - state.drawn);
      if (debug.drawMs.length > 1000) debug.drawMs.shift();
    }
  }

  function drawPanels() {
    for (const panel of state.panels.values()) {
      if (!panel.dirty) continue;
      panel.dirty = false;
      const { runs, tables } = tablesOf(panel);
      if (!tables.length) continue;
      const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
      const key = runs.map((r) => r.id).join(",") + view.xMode + view.logY;
      if (panel.key !== key) {
        if (panel.u) panel.u.destroy();
        panel.key = key;
        panel.u = new uPlot(options(panel, runs), data, panel.el);
      } else {
        panel.setting = true;
        panel.u.setData(data, !panel.zoomed);
        panel.setting = false;
      }
      for (const [value, w] of debug.waiters) {
        if (w.arrived && w.name === panel.name) {
          debug.seen[value] = Date.now();
          debug.waiters.delete(value);
        }
      }
    }
    showStatus();
  }

  function options(panel, runs) {
    return {
      width: panelWidth(),
      height: 260,
      title: panel.name,
      scales: { x: { time: view.xMode === "time" }, y: view.logY ? { distr: 3 } : {} },
      series: [
        { label: view.xMode },
        ...runs.map((r) => ({ label: r.name, stroke: r.color, width: 1.5, spanGaps: true, points: { show: false }, value: (u, v) => fmtValue(v ?? undefined) })),
      ],
      cursor: { drag: { x: true, y: false } },
      hooks: {
        setScale: [(u, key) => { if (key === "x") zoomed(panel); }],
        draw: [() => { debug.renderMs.push(performance.now() - state.drawn); if (debug.renderMs.length > 1000) debug.renderMs.shift(); }],
      },
    };
  }

  /** A zoom in on steps asks each run for that range at full resolution (up to max_points). */
  async function zoomed(panel) {
    if (panel.setting) return;
    const u = panel.u;
    const xs = u.data[0];
    const { min, max } = u.scales.x;
    const full = !xs.length || (min <= xs[0] && max >= xs[xs.length - 1]);
    if (full && !panel.detail) { panel.zoomed = false; return; }
    if (full) {
      panel.zoomed = false;
      panel.detail = null;
      panel.dirty = true;
      return schedule();
    }
    panel.zoomed = true;
    if (view.xMode !== "step") return;
    const range = { stepFrom: Math.max(0, Math.floor(min)), stepTo: Math.min(0xffffffff, Math.ceil(max)) };
    const detail = new Map();
    await Promise.all(state.runs.filter((r) => r && r.series.has(panel.name)).map(async (run) => {
      const cols = (await query(run, { name: panel.name, maxPoints: maxPoints(), ...range })).names.get(panel.name);
      detail.set(run.id, cols ?? { t: [], step: [], value: [] });
    }));
    if (!panel.zoomed || panel.u !== u) return;
    panel.detail = detail;
    panel.dirty = true;
    schedule();
  }

  function renderCompare() {
    const runs = state.runs.filter(Boolean);
    const fields = [
      ["name", (s) => nameOf(s)], ["project", (s) => s.run?.project], ["status", (s) => s.run?.status],
      ["git commit", (s) => s.run?.git_commit], ["tags", (s) => (s.run?.tags ?? []).join(", ")],
      ["user", (s) => s.metadata.user],
    ];
    const keys = new Set();
    for (const r of runs) for (const k of Object.keys(r.summary.run?.params ?? {})) keys.add(k);
    for (const k of [...keys].sort()) fields.push([`params.${k}`, (s) => s.run?.params?.[k]]);
    const rows = fields.map(([label, get]) => {
      const values = runs.map((r) => fmtValue(get(r.summary) ?? ""));
      const differs = new Set(values).size > 1;
      return h("tr", { class: differs ? "diff" : "" }, h("th", {}, label), values.map((v) => h("td", {}, v)));
    });
    compare.replaceChildren(h("table", { class: "grid", id: "compare-table" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), runs.map((r) => h("th", { style: `color: ${r.color}` }, r.name)))),
      h("tbody", {}, rows)));
  }

  Promise.allSettled(ids.map(loadRun)).then((results) => {
    if (state.stopped) return;
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
    renderCompare();
    showStatus();
    if (failed.length) status.textContent += `; ${failed.join("; ")}`;
    if (unique.length > ids.length) status.textContent += `; showing the first ${ids.length} of ${unique.length} runs`;
    debug.loaded = Date.now();
  });

  return {
    stop() {
      state.stopped = true;
      cancelAnimationFrame(state.frame);
      clearTimeout(state.timer);
      for (const run of state.runs) if (run?.watch) run.watch.stop();
      for (const panel of state.panels.values()) if (panel.u) panel.u.destroy();
    },
  };
}
