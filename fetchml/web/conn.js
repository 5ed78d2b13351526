// Connections to /ws: pipelined requests (final responses come back in request order) and
// WATCH_METRICS streams that resume from the last `next` after a drop, with no gap.

import { decodeMetrics, decodeResponse, encode } from "./codec.js";
import { keyHash } from "./sha256.js";

export const wsUrl = () => `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;

/** A key that can travel in a handshake (visible ASCII) goes as a subprotocol token. */
const handshakeOk = (key) => /^[!-~]+$/.test(key);

export class ServerError extends Error {
  constructor(response) {
    super(response.message || response.codeName);
    this.code = response.code;
    this.codeName = response.codeName;
  }
}

export class ConnectionLost extends Error {}

/** The key and its hash; opening a connection offers the key as `fetchml.key.<key>`. */
export class Session {
  constructor(key) {
    this.key = key;
    this.hash = keyHash(key);
  }
  protocols() {
    return handshakeOk(this.key) ? ["fetchml", `fetchml.key.${this.key}`] : ["fetchml"];
  }
  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl(), this.protocols());
      ws.binaryType = "arraybuffer";
      ws.onopen = () => { ws.onerror = ws.onclose = null; resolve(ws); };
      ws.onerror = ws.onclose = () => reject(new ConnectionLost("could not connect"));
    });
  }
}

/** One connection for requests; `call(encoder, fields)` resolves with the final response. */
export class Conn {
  static async open(session, onClose = () => {}) {
    return new Conn(session, await session.open(), onClose);
  }
  constructor(session, ws, onClose) {
    this.session = session;
    this.ws = ws;
    this.pending = [];
    this.closed = false;
    this.onClose = onClose;
    ws.onmessage = (event) => this.receive(decodeResponse(event.data));
    ws.onclose = () => {
      this.closed = true;
      for (const p of this.pending.splice(0)) p.reject(new ConnectionLost("connection lost"));
      this.onClose(this);
    };
  }
  receive(response) {
    if (response.type === "progress" || response.type === "log") return;
    const waiter = this.pending.shift();
    if (!waiter) return;
    if (response.type === "error") waiter.reject(new ServerError(response));
    else waiter.resolve(response);
  }
  call(encoder, fields = {}) {
    if (this.closed) return Promise.reject(new ConnectionLost("not connected"));
    const message = encode[encoder](this.session.hash, fields);
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.ws.send(message);
    });
  }
  close() {
    this.ws.close();
  }
}

/**
 * WATCH_METRICS on its own connection: `onPage({next, count, names})` for every push;
 * after a drop it reconnects (backoff up to 5 s) from the last `next` it received.
 */
export class Watch {
  constructor(session, commit, fromIndex, onPage, onState = () => {}) {
    Object.assign(this, { session, commit, next: fromIndex, onPage, onState });
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }
  async connect() {
    if (this.stopped) return;
    let ws;
    try {
      ws = await this.session.open();
    } catch {
      return this.retry();
    }
    if (this.stopped) return ws.close();
    this.ws = ws;
    let accepted = false;
    ws.onmessage = (event) => {
      const response = decodeResponse(event.data);
      if (!accepted) {
        if (response.type === "error") {
          this.stopped = true;
          this.onState("refused", response.message);
          return ws.close();
        }
        accepted = response.type === "success";
        if (accepted) { this.attempt = 0; this.onState("live"); }
        return;
      }
      if (response.type !== "data" || response.dataType !== "metrics") return;
      const page = decodeMetrics(response.payload);
      if (page.next > this.next) this.next = page.next;
      this.onPage(page);
    };
    ws.onclose = () => this.retry();
    ws.send(encode.watchMetrics(this.session.hash, { commit: this.commit, fromIndex: this.next }));
  }
  retry() {
    if (this.stopped) return;
    this.onState("reconnecting");
    const delay = Math.min(5000, 100 * 2 ** this.attempt++);
    setTimeout(() => this.connect(), delay);
  }
  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close();
  }
}
