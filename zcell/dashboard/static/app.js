// zcell dashboard: one page, four views (workers, tasks, task detail, actors),
// kept live by server-sent events (/api/events): each message carries the
// board's version and rates; when the version moves, the view refetches its JSON.
// Plain JS, no build step; every value from the mesh goes in as text, never HTML.
"use strict";

const view = document.getElementById("view");
const filters = { state: "", name: "", worker: "" };
let lastVersion = -1;
let busy = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function ago(stamp) {
  if (!stamp) return "-";
  return `${Math.max(0, Math.round(Date.now() / 1000 - stamp))}s ago`;
}

function when(stamp) {
  return stamp ? new Date(stamp * 1000).toLocaleTimeString() : "-";
}

function text(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function flash(message, error) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = error ? "error" : "";
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
  return response.json();
}

async function action(url, body) {
  const init = { method: "POST" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  const response = await fetch(url, init);
  const reply = await response.text();
  if (!response.ok) { flash(`failed: ${reply.replace(/<[^>]*>/g, " ").trim()}`, true); return null; }
  const data = JSON.parse(reply);
  flash(data.message || (data["task-id"] ? `sent ${data["task-id"]}` : "done"));
  refresh();
  return data;
}

// -- views ------------------------------------------------------------------------

function workersView(workers) {
  const rows = Object.values(workers).map((w) => {
    const q = el("input", { size: 8, placeholder: "queue", "data-role": "queue" });
    const name = encodeURIComponent(w.hostname);
    const queues = w.queues.map((queue) => el("span", {}, queue, " ",
      el("button", { title: `cancel consumer ${queue}`, "data-action": "cancel-consumer",
        onclick: () => action(`/api/worker/queue/cancel-consumer/${name}?queue=${encodeURIComponent(queue)}`) }, "×"), " "));
    return el("tr", { "data-worker": w.hostname, class: w.status ? "online" : "offline" },
      el("td", {}, w.hostname),
      el("td", { "data-col": "status" }, w.status ? "online" : "offline"),
      el("td", {}, queues),
      el("td", {}, text(w.concurrency)),
      el("td", {}, text(w.active)),
      el("td", { "data-col": "processed" }, text(w.processed)),
      el("td", {}, text(w.failed)),
      el("td", {}, (w.loadavg || []).map((x) => x.toFixed(2)).join(" ")),
      el("td", {}, ago(w.heartbeat)),
      el("td", {}, w.status ? [
        el("button", { "data-action": "grow", onclick: () => action(`/api/worker/pool/grow/${name}?n=1`) }, "pool +1"), " ",
        el("button", { "data-action": "shrink", onclick: () => action(`/api/worker/pool/shrink/${name}?n=1`) }, "pool −1"), " ",
        q, el("button", { "data-action": "add-consumer", onclick: () => q.value && action(`/api/worker/queue/add-consumer/${name}?queue=${encodeURIComponent(q.value)}`) }, "consume"), " ",
        el("button", { "data-action": "shutdown", onclick: () => action(`/api/worker/shutdown/${name}`) }, "shut down"),
      ] : "offline since " + when(w.offline_since)));
  });
  return [el("h2", {}, "Workers"),
    table(["worker", "status", "queues", "concurrency", "active", "processed", "failed", "load", "heartbeat", "actions"], rows)];
}

function revokeButtons(task) {
  if (["SUCCESS", "FAILURE", "REVOKED", "REJECTED"].includes(task.state)) return "";
  const id = encodeURIComponent(task.uuid);
  return [el("button", { "data-action": "revoke", onclick: () => action(`/api/task/revoke/${id}`) }, "revoke"), " ",
    el("button", { "data-action": "terminate", onclick: () => action(`/api/task/revoke/${id}?terminate=true`) }, "terminate")];
}

function applyForm() {
  const name = el("input", { placeholder: "task name", id: "apply-name", size: 24 });
  const args = el("input", { placeholder: "args (JSON list)", id: "apply-args", size: 16 });
  const kwargs = el("input", { placeholder: "kwargs (JSON object)", id: "apply-kwargs", size: 16 });
  const send = () => {
    try {
      const body = { args: JSON.parse(args.value || "[]"), kwargs: JSON.parse(kwargs.value || "{}") };
      action(`/api/task/async-apply/${encodeURIComponent(name.value)}`, body);
    } catch (e) { flash(`args/kwargs are not JSON: ${e.message}`, true); }
  };
  return el("div", { class: "apply" }, "Apply: ", name, args, kwargs, el("button", { id: "apply-send", onclick: send }, "send"));
}

function filterBar() {
  const state = el("select", { id: "filter-state", onchange: (e) => { filters.state = e.target.value; refresh(); } },
    ["", "PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"].map(
      (s) => el("option", s === filters.state ? { value: s, selected: "" } : { value: s }, s || "any state")));
  const input = (key, hint) => el("input", { id: `filter-${key}`, placeholder: hint, value: filters[key],
    onchange: (e) => { filters[key] = e.target.value; refresh(); } });
  return el("div", { class: "filters" }, "Filter: ", state, input("name", "task name"), input("worker", "worker"));
}

function tasksView(tasks) {
  const rows = Object.values(tasks).map((t) => el("tr", { "data-task": t.uuid },
    el("td", {}, text(t.name)),
    el("td", { class: "mono" }, el("a", { href: `/task/${t.uuid}`, "data-link": "" }, t.uuid)),
    el("td", { class: `state-${t.state}`, "data-col": "state" }, t.state),
    el("td", { class: "mono" }, text(t.args)),
    el("td", { class: "mono" }, text(t.result ?? t.exception)),
    el("td", {}, text(t.worker)),
    el("td", {}, when(t.received || t.sent)),
    el("td", {}, when(t.started)),
    el("td", {}, t.runtime == null ? "-" : `${t.runtime.toFixed(3)}s`),
    el("td", {}, revokeButtons(t))));
  return [el("h2", {}, "Tasks"), applyForm(), filterBar(),
    table(["name", "uuid", "state", "args", "result", "worker", "received", "started", "runtime", "actions"], rows)];
}

function taskView(task) {
  const fields = ["uuid", "name", "state", "worker", "args", "kwargs", "result", "exception", "retries",
    "eta", "expires", "runtime", "root_id", "parent_id", "sent", "received", "started", "succeeded", "failed", "revoked"];
  const rows = fields.map((f) => el("tr", {}, el("th", {}, f),
    el("td", { class: "mono", "data-field": f }, ["sent", "received", "started", "succeeded", "failed", "revoked"].includes(f) ? when(task[f]) : text(task[f]))));
  const canvas = (task.canvas || []).map((t) => el("li", {}, el("a", { href: `/task/${t.uuid}`, "data-link": "" }, t.uuid), ` ${text(t.name)} `, el("span", { class: `state-${t.state}` }, t.state)));
  return [el("h2", {}, `Task ${task.name || ""}`), el("p", {}, revokeButtons(task)), table(["field", "value"], rows),
    task.traceback ? [el("h3", {}, "Traceback"), el("pre", { id: "traceback" }, task.traceback)] : "",
    el("h3", {}, "Canvas (same root)"), canvas.length ? el("ul", {}, canvas) : el("p", {}, "- none known -")];
}

function actorsView(data) {
  const rows = data.actors.map((a) => el("tr", { "data-actor": a.id },
    el("td", {}, text(a.type)), el("td", {}, text(a.node)), el("td", { class: "mono" }, text(a.id)),
    el("td", {}, text(a.handled)), el("td", {}, text(a.running))));
  return [el("h2", {}, "Actors (by type and node)"), table(["type", "node", "id", "handled", "running"], rows)];
}

// -- routing and refresh ------------------------------------------------------------

function route() {
  const path = location.pathname;
  if (path.startsWith("/task/")) return { name: "task", url: `/api/task/info/${path.slice(6)}`, draw: taskView };
  if (path.startsWith("/tasks")) {
    const q = new URLSearchParams({ limit: "200" });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    return { name: "tasks", url: `/api/tasks?${q}`, draw: tasksView };
  }
  if (path.startsWith("/actors")) return { name: "actors", url: "/api/actors", draw: actorsView };
  return { name: "workers", url: "/api/workers", draw: workersView };
}

async function refresh() {
  if (busy) return;
  busy = true;
  const current = route();
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", current.name.startsWith(a.dataset.view.replace(/s$/, "")));
  }
  try {
    const data = await getJSON(current.url);
    const focused = document.activeElement && document.activeElement.id;
    const typed = focused && document.activeElement.value;
    view.replaceChildren(...current.draw(data).flat());
    if (focused && document.getElementById(focused)) {  // keep what is being typed
      const field = document.getElementById(focused);
      if (typed !== undefined && field.value !== typed) field.value = typed;
      field.focus();
    }
  } catch (e) {
    view.replaceChildren(el("p", { class: "error" }, `could not load: ${e.message}`));
  } finally {
    busy = false;
  }
}

function spark(id, values) {
  const svg = document.getElementById(`chart-${id}`);
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 240 / (values.length - 1) : 240;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(38 - (v / max) * 36).toFixed(1)}`).join(" ");
  svg.replaceChildren();
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  document.getElementById(`rate-${id}`).textContent = (values[values.length - 1] || 0).toFixed(1);
}

function onSummary(summary) {
  for (const key of ["tasks", "events", "messages"]) spark(key, summary.rates.map((r) => r[key]));
  document.getElementById("counts").textContent =
    `workers online: ${summary.workers_online} · tasks kept: ${summary.tasks}/${summary.max_tasks} · ` +
    `succeeded: ${summary.succeeded} · failed: ${summary.failed} · events: ${summary.events}`;
  if (summary.version !== lastVersion) {
    lastVersion = summary.version;
    refresh();
  }
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  source.onmessage = (message) => onSummary(JSON.parse(message.data));
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link], nav a");
  if (!link || link.origin !== location.origin) return;
  event.preventDefault();
  history.pushState(null, "", link.pathname);
  refresh();
});
window.addEventListener("popstate", refresh);
refresh();
connect();
