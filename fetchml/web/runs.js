// #/runs: the runs the key may read (LIST_RUNS pages, up to 1,000 rows), filtered by the
// daemon, sorted by time there or by any other column here, polled every few seconds.

import { decodeMetrics } from "./codec.js";
import { fmtDuration, fmtTime, fmtValue, h, parseValue } from "./dom.js";

const MAX_ROWS = 1000;
const PAGE_ROWS = 50;
const POLL_MS = 3000;
const STATUSES = ["running", "finished", "failed", "crashed"];
const FIELDS = ["project", "tag", "user", "name"];

/** Chosen params and metric, and the selection, outlive a visit to another view. */
const kept = { form: {}, order: "newest", sort: null, selected: new Set(), params: "", metric: "" };

export const nameOf = (s) => s.run?.name ?? (s.metadata.job_name || s.id);

function started(s) {
  return s.run?.started_at ?? s.run?.created_at ?? s.metadata.timestamp;
}

function duration(s, now) {
  const run = s.run;
  const start = run?.started_at ?? run?.created_at;
  if (!start) return null;
  const end = run.ended_at ?? (run.status === "running" ? now : run.heartbeat_at ?? now);
  return end - start;
}

/** The LIST_RUNS filter of the form: empty fields left out; param `k=v, k2=v2`. */
export function filterOf(form) {
  const filter = {};
  for (const key of [...FIELDS, "status"]) if (form[key]) filter[key] = form[key];
  const params = {};
  for (const pair of (form.param || "").split(",")) {
    if (!pair.trim()) continue;
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`param filter "${pair.trim()}": write key=value`);
    params[pair.slice(0, at).trim()] = parseValue(pair.slice(at + 1).trim());
  }
  if (Object.keys(params).length) filter.params = params;
  return filter;
}

export function runsView(root, app) {
  const state = { rows: [], total: 0, page: 0, error: "", latest: new Map(), timer: null, stopped: false, generation: 0 };
  const inputs = {};
  const form = h("form", { class: "filters", id: "runs-filter" });
  for (const key of FIELDS) {
    inputs[key] = h("input", { id: `filter-${key}`, value: kept.form[key] || "", placeholder: key === "name" ? "name contains" : key });
    form.append(h("label", {}, key, " ", inputs[key]));
  }
  inputs.status = h("select", { id: "filter-status" }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s }, s)));
  inputs.status.value = kept.form.status || "";
  inputs.param = h("input", { id: "filter-param", value: kept.form.param || "", placeholder: "lr=0.1, opt=adam" });
  form.append(
    h("label", {}, "status ", inputs.status),
    h("label", {}, "param ", inputs.param),
    h("button", { type: "submit", id: "apply-filter" }, "Filter"),
    h("button", { type: "button", onclick: () => { for (const el of Object.values(inputs)) el.value = ""; submit(); } }, "Clear"),
  );
  const submit = () => {
    for (const [key, el] of Object.entries(inputs)) kept.form[key] = el.value.trim();
    state.page = 0;
    state.latest.clear();
    refresh();
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });

  const paramsInput = h("input", { id: "param-columns", value: kept.params, placeholder: "auto" });
  const metricInput = h("input", { id: "metric-column", value: kept.metric, placeholder: "e.g. loss" });
  const options = h("form", { class: "filters" },
    h("label", {}, "param columns ", paramsInput),
    h("label", {}, "latest of metric ", metricInput),
    h("button", { type: "submit" }, "Show"));
  options.addEventListener("submit", (event) => {
    event.preventDefault();
    kept.params = paramsInput.value.trim();
    kept.metric = metricInput.value.trim();
    render();
  });

  const chartButton = h("button", { id: "chart-selected", type: "button", onclick: () => {
    location.hash = `#/charts/${[...kept.selected].join(",")}`;
  } });
  const clearButton = h("button", { type: "button", onclick: () => { kept.selected.clear(); render(); } }, "Clear selection");
  const notice = h("p", { id: "runs-notice", class: "notice" });
  const table = h("table", { id: "runs-table", class: "grid" });
  const pager = h("div", { class: "pager" });
  root.append(h("h1", {}, "Runs"), form, options, h("div", { class: "actions" }, chartButton, clearButton), notice, table, pager);

  /** Up to MAX_ROWS matches of the form's filter: {rows, total}. */
  async function load() {
    const filter = { ...filterOf(kept.form), order: kept.order };
    const rows = [];
    let offset = 0;
    let total = 0;
    while (rows.length < MAX_ROWS) {
      const page = await app.json("listRuns", { filter: { ...filter, offset, limit: Math.min(1000, MAX_ROWS - rows.length) } });
      rows.push(...page.runs);
      total = page.total;
      if (page.next_offset === null || page.runs.length === 0) break;
      offset = page.next_offset;
    }
    return { rows, total };
  }

  /** Load and show; only the latest refresh shows its rows (an older one may end later). */
  async function refresh() {
    clearTimeout(state.timer);
    const generation = ++state.generation;
    let loaded = null;
    let error = "";
    try {
      loaded = await load();
    } catch (e) {
      error = e.message;
    }
    if (state.stopped || generation !== state.generation) return;
    state.error = error;
    if (loaded) Object.assign(state, loaded);
    render();
    state.timer = setTimeout(refresh, POLL_MS);
  }

  function paramColumns() {
    if (kept.params) return kept.params.split(",").map((p) => p.trim()).filter(Boolean);
    const seen = new Set();
    for (const s of state.rows) for (const key of Object.keys(s.run?.params ?? {})) if (seen.size < 3) seen.add(key);
    return [...seen];
  }

  function columns() {
    const now = Date.now() / 1000;
    const cols = [
      ["name", "name", nameOf],
      ["id", "id", (s) => s.id],
      ["project", "project", (s) => s.run?.project ?? ""],
      ["user", "user", (s) => s.metadata.user ?? ""],
      ["status", "status", (s) => s.run?.status ?? ""],
      ["started", "started", started],
      ["duration", "duration", (s) => duration(s, now)],
    ];
    for (const p of paramColumns()) cols.push([`param:${p}`, p, (s) => s.run?.params?.[p]]);
    if (kept.metric) cols.push(["metric", kept.metric, (s) => state.latest.get(s.id)?.value]);
    return cols;
  }

  const latestKey = (s) => `${s.id}:${kept.metric}:${s.metrics_count}`;

  function sorted(cols) {
    if (!kept.sort) return state.rows;
    const col = cols.find((c) => c[0] === kept.sort.col);
    if (!col) return state.rows;
    const key = col[2];
    const rank = (v) => (v === undefined || v === null || v === "" ? 1 : 0);
    return [...state.rows].sort((a, b) => {
      const va = key(a);
      const vb = key(b);
      if (rank(va) || rank(vb)) return rank(va) - rank(vb);
      const cmp = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
      return cmp * kept.sort.dir;
    });
  }

  function sortBy(col) {
    if (col === "started") {
      kept.sort = null;
      kept.order = kept.order === "newest" ? "oldest" : "newest";
      refresh();
      return;
    }
    kept.sort = kept.sort?.col === col ? { col, dir: -kept.sort.dir } : { col, dir: 1 };
    render();
  }

  function render() {
    const cols = columns();
    const rows = sorted(cols);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    state.page = Math.min(state.page, pages - 1);
    const visible = rows.slice(state.page * PAGE_ROWS, (state.page + 1) * PAGE_ROWS);
    const loaded = `${state.rows.length} of ${state.total} runs loaded`;
    const how = kept.sort
      ? `sorted by ${kept.sort.col} among the ${state.rows.length} rows loaded (the daemon sorts by time only)`
      : `${kept.order} first`;
    notice.textContent = state.error ? `error: ${state.error}` : `${loaded}; ${how}`;
    notice.classList.toggle("error", Boolean(state.error));
    chartButton.textContent = `Chart ${kept.selected.size} selected`;
    chartButton.disabled = kept.selected.size === 0;

    const arrow = (c) => {
      if (c === "started" && !kept.sort) return kept.order === "newest" ? " ▼" : " ▲";
      return kept.sort?.col === c ? (kept.sort.dir > 0 ? " ▲" : " ▼") : "";
    };
    const head = h("tr", {}, h("th", {}, ""), cols.map(([c, label]) =>
      h("th", { class: "sortable", "data-col": c, onclick: () => sortBy(c) }, label + arrow(c))));
    const body = visible.map((s) => {
      const box = h("input", { type: "checkbox", class: "select", checked: kept.selected.has(s.id), onchange: (e) => {
        if (e.target.checked) kept.selected.add(s.id); else kept.selected.delete(s.id);
        chartButton.textContent = `Chart ${kept.selected.size} selected`;
        chartButton.disabled = kept.selected.size === 0;
      } });
      const cells = cols.map(([c, , get]) => {
        const v = get(s);
        if (c === "name") {
          return h("td", {}, h("a", { href: `#/run/${s.id}` }, v), s.run ? null : h("span", { class: "muted" }, " (no run document)"));
        }
        if (c === "id") return h("td", { class: "mono", title: v }, v.slice(0, 12));
        if (c === "started") return h("td", {}, fmtTime(v));
        if (c === "duration") return h("td", {}, fmtDuration(v));
        if (c === "status") return h("td", { class: `status ${v}` }, v);
        return h("td", {}, fmtValue(v));
      });
      return h("tr", { "data-id": s.id }, h("td", {}, box), cells);
    });
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, body));
    pager.replaceChildren(
      h("button", { type: "button", disabled: state.page === 0, onclick: () => { state.page--; render(); } }, "‹ Prev"),
      ` page ${state.page + 1} of ${pages} `,
      h("button", { type: "button", disabled: state.page >= pages - 1, onclick: () => { state.page++; render(); } }, "Next ›"),
    );
    if (kept.metric) fetchLatest(visible);
  }

  /** The latest value of the chosen metric, for the visible rows only. */
  async function fetchLatest(visible) {
    const metric = kept.metric;
    const missing = visible.filter((s) => s.metrics_count > 0 && state.latest.get(s.id)?.key !== latestKey(s));
    if (!missing.length) return;
    await Promise.all(missing.map(async (s) => {
      try {
        const page = decodeMetrics((await app.call("queryMetrics", { commit: s.id, name: metric, maxPoints: 2 })).payload);
        const col = page.names.get(metric);
        state.latest.set(s.id, { key: latestKey(s), value: col ? col.value[col.value.length - 1] : undefined });
      } catch {
        state.latest.set(s.id, { key: latestKey(s), value: undefined }); // asked again once it grows
      }
    }));
    if (!state.stopped && metric === kept.metric) render();
  }

  refresh();
  return { stop() { state.stopped = true; clearTimeout(state.timer); } };
}
