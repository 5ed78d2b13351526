// #/run/<id>: one run's document and its metrics (last, min, max over every record).
// The address names the run only, never a key: it can be shared.

import { decodeMetrics } from "./codec.js";
import { fmtTime, fmtValue, h } from "./dom.js";
import { nameOf } from "./runs.js";

export function runPage(root, app, id) {
  const state = { stopped: false };
  const head = h("h1", {}, "Run");
  const info = h("table", { class: "grid kv", id: "run-info" });
  const params = h("table", { class: "grid kv", id: "run-params" });
  const metrics = h("table", { class: "grid", id: "run-metrics" });
  const progress = h("p", { class: "notice" });
  root.append(head, h("p", {}, h("a", { href: `#/charts/${id}` }, "Chart this run"), " · ", h("a", { href: "#/runs" }, "all runs")),
    info, h("h2", {}, "Params"), params, h("h2", {}, "Metrics"), progress, metrics);

  const kv = (rows) => rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)));

  async function load() {
    const page = await app.json("listRuns", { filter: { id, limit: 1 } });
    const s = page.runs.find((r) => r.id === id);
    if (!s) throw new Error("no such run, or not one this key may read");
    const run = s.run ?? {};
    head.textContent = nameOf(s);
    info.replaceChildren(...kv([
      ["id", id], ["status", run.status ?? ""], ["project", run.project ?? ""], ["user", s.metadata.user ?? ""],
      ["tags", (run.tags ?? []).join(", ")], ["git commit", run.git_commit ?? ""], ["host", run.host ?? ""],
      ["created", fmtTime(run.created_at ?? s.metadata.timestamp)], ["started", fmtTime(run.started_at)],
      ["ended", fmtTime(run.ended_at)], ["notes", run.notes ?? ""], ["records", s.metrics_count],
      ...(s.run ? [] : [["run document", "none (an experiment logged by commit)"]]),
    ]));
    params.replaceChildren(...kv(Object.entries(run.params ?? {}).sort().map(([k, v]) => [k, fmtValue(v)])));
    await scan(s.metrics_count);
  }

  /** Every record once, page by page: last, min and max of each name. */
  async function scan(total) {
    const stats = new Map();
    let after = 0;
    let seen = 0;
    do {
      const page = decodeMetrics((await app.call("queryMetrics", { commit: id, after })).payload);
      for (const [name, cols] of page.names) {
        let st = stats.get(name);
        if (!st) stats.set(name, (st = { count: 0, min: Infinity, max: -Infinity, last: null, step: 0 }));
        for (const v of cols.value) {
          if (v < st.min) st.min = v;
          if (v > st.max) st.max = v;
        }
        st.count += cols.value.length;
        st.last = cols.value[cols.value.length - 1];
        st.step = cols.step[cols.step.length - 1];
        seen += cols.value.length;
      }
      progress.textContent = `${seen} of ${total} records read`;
      after = page.next;
    } while (after && !state.stopped);
    progress.textContent = `${seen} records`;
    metrics.replaceChildren(
      h("thead", {}, h("tr", {}, ["metric", "last", "at step", "min", "max", "points"].map((c) => h("th", {}, c)))),
      h("tbody", {}, [...stats].map(([name, st]) => h("tr", { "data-metric": name },
        h("td", {}, name), h("td", {}, fmtValue(st.last)), h("td", {}, st.step),
        h("td", {}, fmtValue(st.min)), h("td", {}, fmtValue(st.max)), h("td", {}, st.count)))));
  }

  load().catch((error) => { if (!state.stopped) progress.textContent = `error: ${error.message}`; });
  return { stop() { state.stopped = true; } };
}
