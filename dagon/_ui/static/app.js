// dagon dashboard: shared helpers and the router. Plain ES modules, no build step, no outside
// resources. Text from the server is only ever set with textContent (never parsed as HTML).
import { runsPage, runPage, agentsPage, taskPage } from "./pages.js";

export const STATES = ["pending", "ready", "dispatched", "running", "retry_wait", "succeeded", "failed",
  "cancelled", "upstream_failed"];
export const RUN_STATES = ["running", "succeeded", "failed", "cancelled", "interrupted"];

/** Create an element: el("td", {class: "num", text: "3"}, child, …). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by the page's CSP, style="" is not
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const SVGNS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = String(v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, String(v));
  }
  return node;
}

export function badge(state) {
  return el("span", { class: `badge s-${state}`, text: state.replace("_", " ") });
}

export function countsBar(counts, total) {
  const bar = el("div", { class: "counts", title: STATES.filter((s) => counts[s]).map((s) => `${s} ${counts[s]}`).join(", ") });
  for (const s of STATES) {
    if (!counts[s]) continue;
    bar.append(el("span", { class: `s-${s}`, style: { width: `${(100 * counts[s]) / Math.max(total, 1)}%` } }));
  }
  return bar;
}

export function legend(states) {
  return el("div", { class: "legend" }, ...states.map((s) => el("span", { class: `s-${s}` }, el("i"), s.replace("_", " "))));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  seconds = Math.max(0, seconds);
  if (seconds < 10) return `${seconds.toFixed(2)} s`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

export function joules(j) {
  if (j === null || j === undefined) return "—";
  return j >= 3600 ? `${(j / 3600).toFixed(2)} Wh` : `${j.toFixed(j < 10 ? 2 : 0)} J`;
}

export function clock(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

/** Server time now (the server sends its clock with every document; browsers' clocks drift). */
let skew = 0;
export function syncClock(serverNow) { if (serverNow) skew = serverNow - Date.now() / 1000; }
export function now() { return Date.now() / 1000 + skew; }

const conn = () => document.getElementById("conn");
export function setConn(text, live = false) {
  const c = conn();
  if (!c) return;
  c.textContent = text;
  c.classList.toggle("live", live);
}

/** Open the event stream of a page: a snapshot first, then deltas; reconnects on its own. */
export function stream(params, { snapshot, delta, gone }) {
  let source = null;
  let closed = false;
  const open = () => {
    if (closed) return;
    source = new EventSource(`/api/stream?${new URLSearchParams(params)}`);
    source.addEventListener("snapshot", (e) => { setConn("live", true); const doc = JSON.parse(e.data); syncClock(doc.now); snapshot(doc); });
    source.addEventListener("delta", (e) => { const doc = JSON.parse(e.data); syncClock(doc.now); delta(doc); });
    source.addEventListener("resync", () => { source.close(); setConn("catching up…"); setTimeout(open, 200); });
    source.addEventListener("gone", () => { source.close(); closed = true; setConn("not found"); if (gone) gone(); });
    source.addEventListener("error", () => { if (!closed) setConn("reconnecting…"); });
  };
  open();
  const handle = {
    resync() { if (source) source.close(); open(); },
    close() { closed = true; if (source) source.close(); },
  };
  window.addEventListener("pagehide", () => handle.close());
  return handle;
}

export async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${r.status}: ${(await r.text()).trim()}`);
  return r.json();
}

export async function post(url) {
  const r = await fetch(url, { method: "POST", headers: { "X-Dagon-Control": "1" } });
  const text = await r.text();
  if (!r.ok) throw new Error(`${r.status}: ${text.trim()}`);
  return text;
}

// -- theme -------------------------------------------------------------------------------
function applyTheme(theme) {
  const dark = theme ? theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = dark ? "dark" : "light";
}
function initTheme() {
  let stored = null;
  try { stored = localStorage.getItem("dagon-theme"); } catch { /* private mode */ }
  applyTheme(stored);
  document.getElementById("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    try { localStorage.setItem("dagon-theme", next); } catch { /* private mode */ }
    applyTheme(next);
  });
}

// -- router --------------------------------------------------------------------------------
function route() {
  const main = document.getElementById("main");
  main.replaceChildren();
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  document.getElementById("nav-runs").classList.toggle("here", parts[0] !== "agents");
  document.getElementById("nav-agents").classList.toggle("here", parts[0] === "agents");
  if (parts.length === 0) return runsPage(main);
  if (parts[0] === "agents" && parts.length === 1) return agentsPage(main);
  if (parts[0] === "runs" && parts.length === 2) return runPage(main, parts[1]);
  if (parts[0] === "runs" && parts.length === 4 && parts[2] === "tasks") return taskPage(main, parts[1], parts[3]);
  main.append(el("p", { class: "error", text: "No such page." }));
  return null;
}

initTheme();
route();
