// The kvnode console: reads the serving node's JSON and metrics every
// REFRESH_MS and draws them; the key browser calls the client API. Every
// call carries the token kept in this tab's sessionStorage, if any. Data
// from the node is only ever put into the page as text (textContent),
// never as markup.
"use strict";

const TOKEN_KEY = "kvnode.token";
const REFRESH_MS = 2000;
/** A call unanswered this long fails, so a hung node shows as unreachable. */
const CALL_TIMEOUT_MS = 10000;
/** Most bytes of a value that is not UTF-8 shown, in hex. */
const HEX_SHOWN = 256;
/** Operations always shown, in this order; others once they have requests. */
const CLIENT_OPS = ["get", "put", "delete"];

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** One call to the serving node, with the token when there is one. */
function call(method, path, body) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  return fetch(path, { method, headers, body, cache: "no-store", signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
}

/** The node's JSON error ({"error", "message"}) as an Error with a status. */
async function failure(response) {
  let text = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.message) text += `: ${body.message}`;
  } catch (_) {
    // Not a JSON error body: the status says enough.
  }
  const error = new Error(text);
  error.status = response.status;
  return error;
}

async function getJson(path) {
  const response = await call("GET", path);
  if (!response.ok) throw await failure(response);
  return response.json();
}

// ---- formatting (as `kvnode status` prints) ----

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit + 1 < units.length) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${n} B`;
  const digits = value < 10 ? 2 : value < 100 ? 1 : 0;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

function duration(secs) {
  if (secs === null || secs === undefined) return "-";
  const s = Math.floor(secs);
  const [days, hours, minutes] = [Math.floor(s / 86400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60];
  if (days > 0) return `${days}d ${hours}h`;
  if (hours > 0) return `${hours}h ${minutes}m`;
  if (minutes > 0) return `${minutes}m ${s % 60}s`;
  return `${secs.toFixed(1)}s`;
}

function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "-";
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`;
}

/** `nodetool`'s two letters: U(p)/D(own), then N(ormal)/J(oining)/L(eaving). */
function stateCode(member) {
  const status = member.status === "UP" ? "U" : "D";
  const state = { AVAILABLE: "N", JOINING: "J", BOOTSTRAPPING: "J", LEAVING: "L", LEFT: "L" }[member.state] || "?";
  return status + state;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// ---- the banner ----

function banner(text, isError) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.classList.toggle("error", Boolean(isError));
}

function explain(error, what) {
  if (error.status === 401) return `${what}: this node takes client tokens; type an admin token above.`;
  if (error.status === 403) return `${what}: the token is not an admin token (${error.message}).`;
  if (error.status) return `${what}: ${error.message}`;
  return `Cannot reach the node for ${what}: ${error.message}`;
}

// ---- members (GET /v1/cluster, the document `kvnode status` reads) ----

async function showMembers() {
  const cluster = await getJson("/v1/cluster");
  $("cluster").textContent =
    `cluster ${cluster.cluster_id}, replication factor ${cluster.replication_factor}, as ${cluster.coordinator} sees it`;
  $("self-id").textContent = cluster.coordinator;
  const body = $("members").tBodies[0];
  body.replaceChildren();
  let healthy = 0;
  for (const m of cluster.members) {
    const code = stateCode(m);
    if (code === "UN" && !m.degraded) healthy += 1;
    const row = body.insertRow();
    row.dataset.id = m.id;
    row.dataset.code = code;
    if (m.id === cluster.coordinator) row.classList.add("self");
    cell(row, code, `code ${code}`);
    cell(row, m.id);
    cell(row, m.http_addr);
    cell(row, bytes(m.load_bytes), "num");
    cell(row, m.ownership === null ? "-" : `${(m.ownership * 100).toFixed(1)}%`, "num");
    cell(row, m.version || "-");
    cell(row, duration(m.uptime_secs), "num");
    cell(row, m.last_heard_ms === null ? "-" : `${duration(m.last_heard_ms / 1000)} ago`, "num");
    if (m.degraded) row.title = `degraded: ${m.degraded}`;
  }
  for (const r of cluster.removed) {
    const row = body.insertRow();
    row.dataset.id = r.id;
    row.dataset.code = "removed";
    cell(row, "removed", "code removed");
    cell(row, r.id);
    cell(row, r.waiting_for.length ? `waiting for ${r.waiting_for.join(", ")}` : "re-replicated");
    for (let i = 0; i < 5; i += 1) cell(row, "-");
  }
  const degraded = cluster.members.filter((m) => m.degraded).map((m) => `${m.id} is degraded: ${m.degraded}`);
  $("members-note").textContent =
    `${healthy} of ${cluster.members.length} members UN and healthy. ${degraded.join(" ")}`;
}

// ---- this node's background work (GET /v1/node) ----

function entry(list, term, ...content) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  for (const c of content) dd.append(c);
  list.append(dt, dd);
}

function bar(done, total) {
  const p = document.createElement("progress");
  p.max = Math.max(total, 1);
  p.value = done;
  return p;
}

async function showWork() {
  const node = await getJson("/v1/node");
  const list = $("work");
  list.replaceChildren();
  entry(list, "State", `${node.state}, ${node.not_ready === null ? "ready" : `not ready: ${node.not_ready}`}`);
  if (node.degraded) entry(list, "Degraded", node.degraded);
  entry(list, "Disk", `${bytes(node.disk.tables + node.disk.wal)} (tables ${bytes(node.disk.tables)}, WAL ${bytes(node.disk.wal)})`);

  const ranges = node.streaming.ranges;
  if (ranges.length === 0) {
    entry(list, "Streaming", "no incoming ranges");
  } else {
    const done = ranges.filter((r) => r.state === "done").length;
    const eta = Math.max(0, ...ranges.map((r) => r.eta_seconds || 0));
    entry(list, "Streaming", bar(done, ranges.length),
      ` ${done}/${ranges.length} ranges, ${bytes(node.streaming.bytes)}, ${node.streaming.items} items` +
      (done < ranges.length && eta > 0 ? `, about ${duration(eta)} left` : ""));
  }

  const repair = node.repair;
  if (repair.running) {
    entry(list, "Repair", bar(repair.ranges_done, repair.ranges_total),
      ` running: ${repair.ranges_done}/${repair.ranges_total} ranges`);
  } else {
    const last = repair.last_pass_finished_unix_ms;
    entry(list, "Repair", `${repair.passes} passes` +
      (last ? `, last finished ${new Date(last).toLocaleString()}` : "") +
      (repair.last_pass_failed_ranges ? `, ${repair.last_pass_failed_ranges} ranges failed` : ""));
  }

  const hints = Object.entries(node.hints);
  entry(list, "Hints", hints.length === 0 ? "none pending"
    : hints.map(([target, p]) => `${p.hints} for ${target} (${bytes(p.bytes)})`).join(", "));

  const cleanup = node.cleanup;
  entry(list, "Clean-up", (cleanup.running ? "running, " : "") +
    `${cleanup.passes} passes, last deleted ${cleanup.last_deleted} items` +
    (cleanup.last_refusal ? ` (${cleanup.last_refusal})` : ""));

  const snapshot = node.snapshot;
  entry(list, "Snapshot", snapshot.running
    ? bar(snapshot.bytes_checked, snapshot.bytes_total) : `${snapshot.saves} saves since start`,
  snapshot.running ? ` saving to ${snapshot.dir}` : "");
}

// ---- request rates and latencies (GET /metrics, two scrapes apart) ----

/** The samples of an OpenMetrics text: [{name, labels, value}]. */
function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const l of text.split("\n")) {
    if (l === "" || l.startsWith("#")) continue;
    const m = line.exec(l);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(label)) labels[k] = v.replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

/** The previous scrape: its time (ms) and samples. */
let previous = null;

/** Sum of the samples of `name` whose labels include `match`. */
function sum(samples, name, match) {
  let total = 0;
  for (const s of samples) {
    if (s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

/** What a counter gained since the previous scrape (all of it after a restart). */
function gained(now, before) {
  return now >= before ? now - before : now;
}

/**
 * The `q` quantile of an operation's latency over the last interval, as
 * PromQL's histogram_quantile does it: linear within the bucket that holds
 * the rank. `null` when there were no requests.
 */
function quantile(q, op, samples, before) {
  const buckets = samples
    .filter((s) => s.name === "kvnode_request_duration_seconds_bucket" && s.labels.op === op)
    .map((s) => ({
      le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le),
      count: gained(s.value, sum(before, s.name, s.labels)),
    }))
    .sort((a, b) => a.le - b.le);
  const total = buckets.length ? buckets[buckets.length - 1].count : 0;
  if (total === 0) return null;
  const rank = q * total;
  let [lower, below] = [0, 0];
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return lower;
      return lower + (b.le - lower) * ((rank - below) / Math.max(b.count - below, 1e-9));
    }
    [lower, below] = [b.le, b.count];
  }
  return lower;
}

async function showRequests() {
  const response = await call("GET", "/metrics");
  if (!response.ok) throw await failure(response);
  const samples = parseMetrics(await response.text());
  const now = Date.now();
  const before = previous ? previous.samples : [];
  const interval = previous ? (now - previous.time) / 1000 : null;
  previous = { time: now, samples };

  const ops = new Set(CLIENT_OPS);
  for (const s of samples) {
    if (s.name === "kvnode_requests_total" && s.labels.op !== "unmatched" && s.value > 0) ops.add(s.labels.op);
  }
  const body = $("requests").tBodies[0];
  body.replaceChildren();
  for (const op of ops) {
    const total = sum(samples, "kvnode_requests_total", { op });
    const rate = interval ? gained(total, sum(before, "kvnode_requests_total", { op })) / interval : null;
    const row = body.insertRow();
    row.dataset.op = op;
    cell(row, op);
    cell(row, rate === null ? "-" : rate.toFixed(1), "num");
    cell(row, seconds(quantile(0.5, op, samples, before)), "num");
    cell(row, seconds(quantile(0.99, op, samples, before)), "num");
    cell(row, String(total), "num");
  }
  const errors = samples
    .filter((s) => s.name === "kvnode_errors_total" && s.value > 0)
    .map((s) => `${s.labels.kind} ${s.value}`);
  $("errors").textContent = (interval ? `Quantiles over the last ${interval.toFixed(1)} s. ` : "Quantiles since the node started. ") +
    (errors.length ? `Error answers since start: ${errors.join(", ")}.` : "No error answers since start.");
}

// ---- the refresh loop ----

async function refresh() {
  const parts = [["the members", showMembers], ["this node's work", showWork], ["the metrics", showRequests]];
  const results = await Promise.allSettled(parts.map(([, show]) => show()));
  const failed = results
    .map((r, i) => (r.status === "rejected" ? explain(r.reason, parts[i][0]) : null))
    .filter(Boolean);
  const unreachable = results.some((r) => r.status === "rejected" && !r.reason.status);
  banner(failed.join(" "), unreachable);
  setTimeout(refresh, REFRESH_MS);
}

// ---- the key browser ----

function keyPath() {
  const key = $("kv-key").value;
  if (key === "") throw new Error("type a key");
  return `/v1/kv/${encodeURIComponent(key)}?consistency=${$("kv-consistency").value}`;
}

function result(text, ok, status) {
  const out = $("kv-result");
  out.textContent = text;
  out.className = `result ${ok ? "ok" : "failed"}`;
  out.dataset.status = String(status);
}

/** A value as text if it is UTF-8, else the hex of its first bytes. */
function shown(value) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(value);
  } catch (_) {
    const hex = Array.from(value.subarray(0, HEX_SHOWN), (b) => b.toString(16).padStart(2, "0")).join(" ");
    return `(not UTF-8; hex${value.length > HEX_SHOWN ? `, first ${HEX_SHOWN} bytes` : ""})\n${hex}`;
  }
}

async function keyCall(method) {
  let path;
  try {
    path = keyPath();
  } catch (e) {
    result(e.message, false, 0);
    return;
  }
  try {
    const response = await call(method, path, method === "PUT" ? $("kv-value").value : undefined);
    const version = response.headers.get("x-kvnode-version");
    if (!response.ok) {
      const error = await failure(response);
      result(response.status === 404 ? "not found" : error.message, false, response.status);
      return;
    }
    if (method === "GET") {
      const value = new Uint8Array(await response.arrayBuffer());
      result(`${value.length} bytes, version ${version}\n${shown(value)}`, true, response.status);
    } else if (method === "PUT") {
      result(`stored, version ${version}`, true, response.status);
    } else {
      result(`deleted, version ${version}`, true, response.status);
    }
  } catch (e) {
    result(`cannot reach the node: ${e.message}`, false, 0);
  }
}

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  $("token").placeholder = token() ? "a token is set for this tab" : $("token").placeholder;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    $("token").placeholder = "a token is set for this tab";
    previous = null;
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").placeholder = "no token: the node must be open";
  });
  $("kv-get").addEventListener("click", () => keyCall("GET"));
  $("kv-put").addEventListener("click", () => keyCall("PUT"));
  $("kv-delete").addEventListener("click", () => keyCall("DELETE"));
  refresh();
});
