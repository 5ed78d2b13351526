// The dashboard's shell: login (the key never leaves this page but as the handshake's
// subprotocol token and as its hash in requests), one pipelined connection that comes
// back after a drop, and the views behind #/runs, #/charts/<ids>, #/run/<id>, #/jobs.

import { dataJson } from "./codec.js";
import { Conn, ConnectionLost, ServerError, Session } from "./conn.js";
import { chartsView } from "./charts.js";
import { jobsView } from "./jobs.js";
import { runPage } from "./runpage.js";
import { runsView } from "./runs.js";

const STORE = "fetchml.key";
const $ = (id) => document.getElementById(id);

export const app = {
  session: null,
  conn: null,
  whoami: null,
  view: null,
  connected: null, // a promise of the current connection while logged in
  /** A request on `conn`, or on the shared connection (waiting for it while it
   * reconnects); retried with backoff when the rate limit answers SERVER_OVERLOADED. */
  async call(encoder, fields, on = null) {
    for (let attempt = 0; ; attempt++) {
      const conn = on ?? (await this.connected);
      try {
        return await conn.call(encoder, fields);
      } catch (error) {
        if (!(error instanceof ServerError && error.codeName === "SERVER_OVERLOADED") || attempt >= 5) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
      }
    }
  },
  async json(encoder, fields, on = null) {
    const response = await this.call(encoder, fields, on);
    return response.type === "status" ? JSON.parse(response.statusJson) : dataJson(response);
  },
};
window.__fetchml = { app };

function setState(text) {
  $("conn-state").textContent = text;
  $("conn-state").dataset.state = text;
}

/** After a drop, reconnect with backoff (at most 5 s apart) for as long as logged in. */
function keepConnected(session, conn) {
  let ready;
  app.connected = new Promise((resolve) => { ready = resolve; });
  const onClose = () => {
    if (app.session !== session) return;
    setState("reconnecting");
    keepConnected(session, null);
  };
  if (conn) {
    conn.onClose = onClose;
    setState("connected");
    ready(conn);
    return;
  }
  let attempt = 0;
  const retry = async () => {
    if (app.session !== session) return;
    try {
      const fresh = await Conn.open(session, onClose);
      if (app.session !== session) return fresh.close();
      app.conn = fresh;
      setState("connected");
      ready(fresh);
    } catch {
      setTimeout(retry, Math.min(5000, 200 * 2 ** attempt++));
    }
  };
  retry();
}

/** Why a login failed, in the words a person needs. */
async function diagnose(error) {
  if (error instanceof ServerError) {
    return error.codeName === "AUTHENTICATION_FAILED" ? "key refused" : error.message;
  }
  try {
    const health = await fetch("/health", { cache: "no-store" });
    if (!health.ok) throw new Error(String(health.status));
  } catch {
    return "daemon unreachable";
  }
  try {
    // A plain GET of /ws without a key: 429 while this address is throttled.
    const probe = await fetch("/ws", { cache: "no-store" });
    if (probe.status === 429) return "throttled: too many failed keys from this address, try again later";
  } catch {
    // fall through
  }
  return "key refused";
}

async function login(key, remember) {
  const session = new Session(key);
  let conn;
  try {
    let closed = false;
    conn = await Conn.open(session, () => { closed = true; });
    const whoami = dataJson(await conn.call("whoami"));
    if (closed) throw new ConnectionLost("connection lost");
    app.whoami = whoami;
  } catch (error) {
    if (conn) conn.close();
    return diagnose(error);
  }
  (remember ? localStorage : sessionStorage).setItem(STORE, key);
  app.session = session;
  app.conn = conn;
  keepConnected(session, conn);
  $("who").textContent = `${app.whoami.user} (${app.whoami.role})`;
  $("login").hidden = true;
  $("nav").hidden = false;
  route();
  return null;
}

function logout() {
  sessionStorage.removeItem(STORE);
  localStorage.removeItem(STORE);
  const conn = app.conn;
  app.session = app.conn = app.whoami = null;
  if (conn) conn.close();
  stopView();
  showLogin("");
}

function showLogin(message) {
  $("nav").hidden = true;
  $("view").replaceChildren();
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("key").value = "";
  $("key").focus();
}

function stopView() {
  if (app.view) app.view.stop();
  app.view = null;
}

function route() {
  if (!app.session) return;
  stopView();
  const root = $("view");
  root.replaceChildren();
  const [, page = "runs", arg = ""] = location.hash.match(/^#\/([a-z]+)\/?(.*)$/) || [];
  const ids = decodeURIComponent(arg).split(",").filter((id) => /^[0-9a-f]{40}$/.test(id));
  if (page === "charts") app.view = chartsView(root, app, ids);
  else if (page === "run" && ids.length === 1) app.view = runPage(root, app, ids[0]);
  else if (page === "jobs") app.view = jobsView(root, app);
  else app.view = runsView(root, app);
  document.querySelectorAll("#nav a").forEach((a) => {
    a.classList.toggle("active", a.getAttribute("href") === `#/${page}`);
  });
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key").value;
  if (!key) return;
  $("login-error").textContent = "";
  $("login-button").disabled = true;
  const problem = await login(key, $("remember").checked);
  $("login-button").disabled = false;
  if (problem) showLogin(problem);
});
$("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);

const stored = sessionStorage.getItem(STORE) || localStorage.getItem(STORE);
if (stored) {
  $("remember").checked = localStorage.getItem(STORE) !== null;
  login(stored, $("remember").checked).then((problem) => { if (problem) showLogin(problem); });
} else {
  showLogin("");
}
