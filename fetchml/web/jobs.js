// #/jobs: the queue and its history as STATUS shows them to this key, with cancel for
// the queued and running jobs it may update (CANCEL_JOB with the row's job ID: only that
// job is cancelled, whatever its name).

import { fmtDuration, fmtTime, h } from "./dom.js";

const POLL_MS = 3000;

function mayCancel(whoami, job) {
  if (job.status !== "queued" && job.status !== "running") return false;
  const perms = whoami.permissions ?? [];
  if (!perms.includes("*") && !perms.includes("jobs:update")) return false;
  const scope = whoami.write_scope ?? whoami.scope;
  return scope === "all" || job.metadata?.user === whoami.user;
}

/** Leases lost, out of the spec's max_attempts. */
function attempts(job) {
  return job.spec ? `${job.attempts}/${job.spec.max_attempts}` : String(job.attempts ?? 0);
}

/** The last heartbeat's age by this browser's clock ("12s ago"). */
function heartbeatAge(job) {
  if (job.heartbeat_at === null || job.heartbeat_at === undefined) return "";
  return `${fmtDuration(Math.max(0, Date.now() / 1000 - job.heartbeat_at))} ago`;
}

/** The command as a shell would take it (words with spaces or quotes quoted). */
function commandText(job) {
  if (!job.spec) return "";
  const quote = (w) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", "'\"'\"'")}'`);
  return job.spec.command.map(quote).join(" ");
}

function shorten(text, width = 40) {
  return text.length <= width ? text : `${text.slice(0, width - 3)}...`;
}

export function jobsView(root, app) {
  const state = { stopped: false, timer: null, armed: null, message: "" };
  const notice = h("p", { class: "notice", id: "jobs-notice" });
  const table = h("table", { class: "grid", id: "jobs-table" });
  root.append(h("h1", {}, "Jobs"),
    h("p", { class: "muted" }, "Cancel cancels the job of its row only (by its ID). Attempts: leases lost out of the most allowed."),
    notice, table);

  async function cancel(job) {
    if (state.armed !== job.id) {
      state.armed = job.id;
      return refresh();
    }
    state.armed = null;
    try {
      const response = await app.call("cancelJob", { jobName: job.id });
      state.message = `${job.job_name} ${job.id.slice(0, 8)}: ${response.message}`;
    } catch (error) {
      state.message = `${job.job_name} ${job.id.slice(0, 8)}: ${error.message}`;
    }
    refresh();
  }

  function render(status) {
    notice.textContent = `${status.jobs.length} jobs shown${status.total !== undefined ? ` of ${status.total}` : ""}; ${status.queue_length} queued in all` +
      (state.message ? `. ${state.message}` : "");
    const cols = ["job", "id", "status", "priority", "attempts", "worker", "heartbeat", "user", "created",
      "started", "ended", "command", "error", ""];
    table.replaceChildren(
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
      h("tbody", {}, status.jobs.map((job) => h("tr", { "data-id": job.id, "data-name": job.job_name },
        h("td", {}, job.job_name), h("td", { class: "mono", title: job.id }, job.id.slice(0, 8)),
        h("td", { class: `status ${job.status}` }, job.status), h("td", {}, job.priority),
        h("td", { class: "attempts" }, attempts(job)), h("td", { class: "worker" }, job.worker_id ?? ""),
        h("td", { class: "heartbeat" }, heartbeatAge(job)),
        h("td", {}, job.metadata?.user ?? ""), h("td", {}, fmtTime(job.created_at)),
        h("td", {}, fmtTime(job.started_at)), h("td", {}, fmtTime(job.ended_at)),
        h("td", { class: "command mono", title: commandText(job) }, shorten(commandText(job))),
        h("td", { class: "error" }, job.error ?? ""),
        h("td", {}, mayCancel(app.whoami, job)
          ? h("button", { type: "button", class: "cancel", onclick: () => cancel(job) }, state.armed === job.id ? "Confirm cancel" : "Cancel")
          : "")))));
  }

  async function refresh() {
    clearTimeout(state.timer);
    try {
      const status = await app.json("status");
      if (state.stopped) return;
      render(status);
    } catch (error) {
      notice.textContent = `error: ${error.message}`;
    }
    if (!state.stopped) state.timer = setTimeout(refresh, POLL_MS);
  }

  refresh();
  return { stop() { state.stopped = true; clearTimeout(state.timer); } };
}
