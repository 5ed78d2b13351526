// The binary protocol in JavaScript, mirroring fetchml/protocol: requests are
// [opcode:u8][key hash:16][body], responses [packet type:u8][timestamp:u64][body],
// big-endian; str8 / str16 strings in requests, uvarint-prefixed ones in responses.

export const Opcode = Object.freeze({
  QUEUE_JOB: 0x01, STATUS: 0x02, CANCEL_JOB: 0x03, PRUNE: 0x04, LOG_METRIC: 0x0a,
  GET_EXPERIMENT: 0x0b, LOG_METRICS: 0x0c, CREATE_EXPERIMENT: 0x0d, LIST_EXPERIMENTS: 0x0e,
  QUERY_METRICS: 0x0f, WATCH_METRICS: 0x10, CLAIM_JOB: 0x11, UPDATE_JOB: 0x12, WHOAMI: 0x13,
  UPDATE_RUN: 0x14, LOG_METRICS_AT: 0x15, LIST_RUNS: 0x17, PRUNE_PREVIEW: 0x18,
});

export const PacketType = Object.freeze({
  SUCCESS: 0x00, ERROR: 0x01, PROGRESS: 0x02, STATUS: 0x03, DATA: 0x04, LOG: 0x05,
});

export const ErrorCode = Object.freeze({
  UNKNOWN_ERROR: 0x00, INVALID_REQUEST: 0x01, AUTHENTICATION_FAILED: 0x02,
  PERMISSION_DENIED: 0x03, RESOURCE_NOT_FOUND: 0x04, RESOURCE_ALREADY_EXISTS: 0x05,
  SERVER_OVERLOADED: 0x10, DATABASE_ERROR: 0x11, NETWORK_ERROR: 0x12, STORAGE_ERROR: 0x13,
  TIMEOUT: 0x14, JOB_NOT_FOUND: 0x20, JOB_ALREADY_RUNNING: 0x21, JOB_FAILED_TO_START: 0x22,
  JOB_EXECUTION_FAILED: 0x23, JOB_CANCELLED: 0x24, OUT_OF_MEMORY: 0x30, DISK_FULL: 0x31,
  INVALID_CONFIGURATION: 0x32, SERVICE_UNAVAILABLE: 0x33,
});

export const ERROR_NAMES = Object.fromEntries(Object.entries(ErrorCode).map(([k, v]) => [v, k]));
export const MAX_STEP = 0xffffffff;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });
const lenient = new TextDecoder("utf-8");

export class CodecError extends Error {}

/** Builds one request: fields appended in order, big-endian. */
class Writer {
  constructor(opcode, keyHash) {
    if (keyHash.length !== 16) throw new CodecError("a key hash is 16 bytes");
    this.parts = [Uint8Array.of(opcode), keyHash];
  }
  fixed(size, set) {
    const buf = new Uint8Array(size);
    set(new DataView(buf.buffer));
    this.parts.push(buf);
    return this;
  }
  u8(v) { return this.fixed(1, (d) => d.setUint8(0, v)); }
  u16(v) { return this.fixed(2, (d) => d.setUint16(0, v)); }
  u32(v) { return this.fixed(4, (d) => d.setUint32(0, v)); }
  u64(v) { return this.fixed(8, (d) => d.setBigUint64(0, BigInt(v))); }
  i64(v) { return this.fixed(8, (d) => d.setBigInt64(0, BigInt(v))); }
  f64(v) { return this.fixed(8, (d) => d.setFloat64(0, v)); }
  commit(id) {
    const raw = typeof id === "string" ? hexToBytes(id) : id;
    if (raw.length !== 20) throw new CodecError("a commit ID is 20 bytes (40 hex characters)");
    this.parts.push(raw);
    return this;
  }
  str(text, prefixBytes) {
    const raw = utf8.encode(text);
    if (raw.length >= 2 ** (8 * prefixBytes)) throw new CodecError(`string too long: ${raw.length} bytes`);
    return (prefixBytes === 1 ? this.u8(raw.length) : this.u16(raw.length)).raw(raw);
  }
  str8(text) { return this.str(text, 1); }
  str16(text) { return this.str(text, 2); }
  raw(bytes) { this.parts.push(bytes); return this; }
  bytes() {
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let pos = 0;
    for (const p of this.parts) { out.set(p, pos); pos += p.length; }
    return out;
  }
}

function metricName(name) {
  const raw = utf8.encode(name);
  if (raw.length < 1 || raw.length > 255 || raw.includes(0)) {
    throw new CodecError("a metric name is 1..255 bytes of UTF-8 without 0x00");
  }
  return name;
}

/** Request encoders, one per opcode; `k` is the 16-byte key hash. */
export const encode = {
  queueJob: (k, { commit, priority = 5, jobName }) =>
    new Writer(Opcode.QUEUE_JOB, k).commit(commit).u8(priority).str8(jobName).bytes(),
  status: (k) => new Writer(Opcode.STATUS, k).bytes(),
  cancelJob: (k, { jobName }) => new Writer(Opcode.CANCEL_JOB, k).str8(jobName).bytes(),
  prune: (k, { pruneType, value }) => new Writer(Opcode.PRUNE, k).u8(pruneType).u32(value).bytes(),
  logMetric: (k, { commit, step = 0, value, name }) =>
    new Writer(Opcode.LOG_METRIC, k).commit(commit).u32(step).f64(value).str8(metricName(name)).bytes(),
  getExperiment: (k, { commit }) => new Writer(Opcode.GET_EXPERIMENT, k).commit(commit).bytes(),
  logMetrics: (k, { commit, points }) => {
    const w = new Writer(Opcode.LOG_METRICS, k).commit(commit).u16(points.length);
    for (const p of points) w.u32(p.step).f64(p.value).str8(metricName(p.name));
    return w.bytes();
  },
  createExperiment: (k, { commit, jobName = "" }) =>
    new Writer(Opcode.CREATE_EXPERIMENT, k).commit(commit).str8(jobName).bytes(),
  listExperiments: (k) => new Writer(Opcode.LIST_EXPERIMENTS, k).bytes(),
  queryMetrics: (k, { commit, name = "", stepFrom = 0, stepTo = MAX_STEP, maxPoints = 0, after = 0, limit = 0 }) =>
    new Writer(Opcode.QUERY_METRICS, k).commit(commit).str8(name).u32(stepFrom).u32(stepTo)
      .u32(maxPoints).u64(after).u32(limit).bytes(),
  watchMetrics: (k, { commit, fromIndex = 0, name = "" }) =>
    new Writer(Opcode.WATCH_METRICS, k).commit(commit).u64(fromIndex).str8(name).bytes(),
  claimJob: (k, { workerId }) => new Writer(Opcode.CLAIM_JOB, k).str8(workerId).bytes(),
  updateJob: (k, { jobId, status, error = "" }) =>
    new Writer(Opcode.UPDATE_JOB, k).str8(jobId).u8(status).str16(error).bytes(),
  whoami: (k) => new Writer(Opcode.WHOAMI, k).bytes(),
  updateRun: (k, { commit, patch }) =>
    new Writer(Opcode.UPDATE_RUN, k).commit(commit).str16(typeof patch === "string" ? patch : JSON.stringify(patch)).bytes(),
  logMetricsAt: (k, { commit, records }) => {
    const w = new Writer(Opcode.LOG_METRICS_AT, k).commit(commit).u16(records.length);
    for (const r of records) w.i64(r.timestamp).u32(r.step).f64(r.value).str8(metricName(r.name));
    return w.bytes();
  },
  listRuns: (k, { filter = "" } = {}) =>
    new Writer(Opcode.LIST_RUNS, k).str16(typeof filter === "string" ? filter : JSON.stringify(filter)).bytes(),
  prunePreview: (k, { pruneType, value }) =>
    new Writer(Opcode.PRUNE_PREVIEW, k).u8(pruneType).u32(value).bytes(),
};

// -- responses ---------------------------------------------------------------------------

export function encodeUvarint(value) {
  const out = [];
  let v = BigInt(value);
  while (v >= 0x80n) { out.push(Number(v & 0x7fn) | 0x80); v >>= 7n; }
  out.push(Number(v));
  return Uint8Array.from(out);
}

/** [value, position after it]; the value is a Number (exact below 2**53). */
export function decodeUvarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (let shift = 0; shift <= 63; shift += 7) {
    if (pos >= bytes.length) throw new CodecError("uvarint runs past the end of the packet");
    const b = bytes[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
  }
  throw new CodecError("uvarint longer than 64 bits");
}

function vbytes(bytes, pos) {
  const [length, start] = decodeUvarint(bytes, pos);
  if (start + length > bytes.length) throw new CodecError(`string of ${length} bytes runs past the end of the packet`);
  return [bytes.subarray(start, start + length), start + length];
}

function vstr(bytes, pos) {
  const [raw, end] = vbytes(bytes, pos);
  try {
    return [fromUtf8.decode(raw), end];
  } catch {
    throw new CodecError("invalid UTF-8 in a response string");
  }
}

/** One response packet -> {type, timestamp, ...fields}; every defect throws CodecError. */
export function decodeResponse(packet) {
  const bytes = packet instanceof Uint8Array ? packet : new Uint8Array(packet);
  if (bytes.length < 9) throw new CodecError(`packet too short: ${bytes.length} bytes, need 9`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = bytes[0];
  const timestamp = Number(view.getBigUint64(1));
  let pos = 9;
  let r;
  const need = (n) => { if (pos + n > bytes.length) throw new CodecError("packet too short"); };
  switch (type) {
    case PacketType.SUCCESS: {
      const [message, end] = vstr(bytes, pos);
      r = { type: "success", timestamp, message }; pos = end; break;
    }
    case PacketType.ERROR: {
      need(1);
      const code = bytes[pos];
      const [message, p1] = vstr(bytes, pos + 1);
      const [details, p2] = vstr(bytes, p1);
      r = { type: "error", timestamp, code, codeName: ERROR_NAMES[code], message, details }; pos = p2; break;
    }
    case PacketType.PROGRESS: {
      need(9);
      const progressType = bytes[pos];
      const value = view.getUint32(pos + 1);
      const total = view.getUint32(pos + 5);
      const [message, end] = vstr(bytes, pos + 9);
      r = { type: "progress", timestamp, progressType, value, total, message }; pos = end; break;
    }
    case PacketType.STATUS: {
      const [statusJson, end] = vstr(bytes, pos);
      r = { type: "status", timestamp, statusJson }; pos = end; break;
    }
    case PacketType.DATA: {
      const [dataType, p1] = vstr(bytes, pos);
      const [payload, p2] = vbytes(bytes, p1);
      r = { type: "data", timestamp, dataType, payload }; pos = p2; break;
    }
    case PacketType.LOG: {
      need(1);
      const level = bytes[pos];
      const [message, end] = vstr(bytes, pos + 1);
      r = { type: "log", timestamp, level, message }; pos = end; break;
    }
    default:
      throw new CodecError(`unknown packet type 0x${type.toString(16).padStart(2, "0")}`);
  }
  if (pos !== bytes.length) throw new CodecError(`${bytes.length - pos} trailing bytes after a ${r.type}`);
  return r;
}

/** A DATA payload's JSON. */
export function dataJson(response) {
  return JSON.parse(lenient.decode(response.payload));
}

// -- metrics ------------------------------------------------------------------------------

/**
 * A DATA `metrics` payload, [next:u64][count:u32][records], as columns per metric name:
 * {next, count, names: Map(name -> {t: [], step: [], value: []})} in file order.
 */
export function decodeMetrics(payload) {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (payload.length < 12) throw new CodecError("metrics payload too short");
  const next = Number(view.getBigUint64(0));
  const count = view.getUint32(8);
  const names = new Map();
  let pos = 12;
  for (let i = 0; i < count; i++) {
    if (pos + 21 > payload.length) throw new CodecError("metrics payload cut inside a record");
    const t = Number(view.getBigUint64(pos));
    const step = view.getUint32(pos + 8);
    const value = view.getFloat64(pos + 12);
    const length = payload[pos + 20];
    if (pos + 21 + length > payload.length) throw new CodecError("metrics payload cut inside a name");
    const name = lenient.decode(payload.subarray(pos + 21, pos + 21 + length));
    pos += 21 + length;
    let col = names.get(name);
    if (!col) names.set(name, (col = { t: [], step: [], value: [] }));
    col.t.push(t); col.step.push(step); col.value.push(value);
  }
  if (pos !== payload.length) throw new CodecError(`${payload.length - pos} bytes after ${count} records`);
  return { next, count, names };
}

/** The same payload as a list of {timestamp, step, value, name} records in file order. */
export function decodeRecords(payload) {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = [];
  let pos = 12;
  for (let i = 0; i < view.getUint32(8); i++) {
    const length = payload[pos + 20];
    out.push({
      timestamp: Number(view.getBigUint64(pos)), step: view.getUint32(pos + 8),
      value: view.getFloat64(pos + 12), name: lenient.decode(payload.subarray(pos + 21, pos + 21 + length)),
    });
    pos += 21 + length;
  }
  return { next: Number(view.getBigUint64(0)), records: out };
}

export function hexToBytes(hex) {
  if (!/^([0-9a-f]{2})*$/.test(hex)) throw new CodecError("not lowercase hex");
  return Uint8Array.from(hex.match(/../g) || [], (b) => parseInt(b, 16));
}
