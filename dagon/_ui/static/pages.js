// The four pages: runs, one run (DAG, Gantt, tasks, details), agents, one task's log.
import {
  el, svg, badge, countsBar, legend, duration, bytes, joules, clock, now, stream, getJSON, post,
  STATES, RUN_STATES,
} from "./app.js";
import { Dag } from "./dag.js";
import { Gantt } from "./gantt.js";

const runUrl = (run) => `/runs/${encodeURIComponent(run)}`;
const taskUrl = (run, task) => `${runUrl(run)}/tasks/${encodeURIComponent(task)}`;
const apiTask = (run, task) => `/api/runs/${encodeURIComponent(run)}/tasks/${encodeURIComponent(task)}`;

function runDuration(r) { return (r.finished_at ?? (r.state === "running" ? now() : null)) - r.submitted_at; }

// -- runs -----------------------------------------------------------------------------------
export function runsPage(main) {
  document.title = "dagon — runs";
  const filter = el("select", { id: "state-filter", "aria-label": "filter by state" },
    el("option", { value: "", text: "all states" }), ...RUN_STATES.map((s) => el("option", { value: s, text: s })));
  const body = el("tbody", { id: "runs-body" });
  main.append(el("h1", { text: "Runs" }),
    el("div", { class: "toolbar" }, filter, el("span", { class: "muted", id: "runs-count" })),
    el("div", { class: "panel scroll" }, el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ...["run", "workflow", "state", "tasks", "", "duration", "energy", "submitted"].map((h) => el("th", { text: h })))),
      body)));
  const runs = new Map();
  const draw = () => {
    const want = filter.value;
    const rows = [...runs.values()].filter((r) => !want || r.state === want).sort((a, b) => b.submitted_at - a.submitted_at);
    body.replaceChildren(...rows.map((r) => el("tr", { class: "run", dataset: { run: r.id, state: r.state } },
      el("td", {}, el("a", { href: runUrl(r.id), class: "mono", text: r.id })),
      el("td", { text: r.workflow }),
      el("td", {}, badge(r.state)),
      el("td", { class: "num", text: `${r.counts.succeeded || 0}/${r.tasks}` }),
      el("td", {}, countsBar(r.counts, r.tasks)),
      el("td", { class: "num", text: duration(runDuration(r)) }),
      el("td", { class: "num", text: joules(r.energy) }),
      el("td", { class: "num", text: clock(r.submitted_at) }))));
    document.getElementById("runs-count").textContent = `${rows.length} of ${runs.size} runs`;
  };
  filter.addEventListener("change", draw);
  stream({ page: "runs" }, {
    snapshot(doc) { runs.clear(); for (const r of doc.runs) runs.set(r.id, r); draw(); },
    delta(doc) { for (const r of doc.runs || []) runs.set(r.id, r); draw(); },
  });
  setInterval(() => { if ([...runs.values()].some((r) => r.state === "running")) draw(); }, 1000);
}

// -- one run -------------------------------------------------------------------------------
class TaskList {
  // A virtualised list: only the rows in view exist in the page, whatever the run's size.
  constructor(box, tasks, onSelect) {
    this.box = box; this.tasks = tasks; this.onSelect = onSelect; this.ROW = 26;
    this.spacer = el("div", {}); this.layer = el("div", {});
    box.replaceChildren(this.spacer, this.layer);
    this.text = ""; this.state = ""; this.depth = null; this.selected = null;
    box.addEventListener("scroll", () => this.paint());
    this.refilter();
  }
  refilter() {
    const t = this.tasks, text = this.text.toLowerCase();
    this.rows = [];
    for (let i = 0; i < t.names.length; i++) {
      if (this.state && t.states[i] !== this.state) continue;
      if (this.depth !== null && t.layer[i] !== this.depth) continue;
      if (text && !t.names[i].toLowerCase().includes(text)) continue;
      this.rows.push(i);
    }
    this.spacer.style.height = `${this.rows.length * this.ROW}px`;
    this.paint();
  }
  changed() { if (this.state) { if (!this.q) { this.q = setTimeout(() => { this.q = null; this.refilter(); }, 300); } } else this.paint(); }
  paint() {
    const t = this.tasks, top = this.box.scrollTop, h = this.box.clientHeight || 360;
    const first = Math.max(0, Math.floor(top / this.ROW) - 5), last = Math.min(this.rows.length, Math.ceil((top + h) / this.ROW) + 5);
    const out = [];
    for (let k = first; k < last; k++) {
      const i = this.rows[k];
      const row = el("div", { class: `row${t.names[i] === this.selected ? " sel" : ""}`, style: { top: `${k * this.ROW}px` }, dataset: { task: t.names[i] } },
        el("span", { class: "mono", text: t.names[i] }), el("span", {}, badge(t.states[i])),
        el("span", { class: "num", text: t.attempts[i] }), el("span", { text: t.agents[i] || "—" }), el("span", { class: "muted", text: `d${t.layer[i]}` }));
      row.addEventListener("click", () => this.onSelect(t.names[i]));
      out.push(row);
    }
    this.layer.replaceChildren(...out);
  }
}

function field(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  dl.append(el("dt", { text: name }), el("dd", {}, value instanceof Node ? value : document.createTextNode(String(value))));
}

export function renderDetail(d, { full = false } = {}) {
  const box = el("div", { class: "detail" });
  box.append(el("h2", {}, el("span", { class: "mono", text: d.name }), " ", badge(d.state)));
  const dl = el("dl");
  field(dl, "attempt", d.retries ? `${d.attempt} (retries allowed: ${d.retries})` : d.attempt);
  field(dl, "agent", d.agent ? `${d.agent}${d.host ? ` (host ${d.host})` : ""}` : null);
  field(dl, "runtime", d.runtime);
  field(dl, "exit code", d.exit_code);
  field(dl, "duration", d.duration !== undefined && d.duration !== null ? duration(d.duration) : null);
  field(dl, "cpu time", d.cpu_time ? duration(d.cpu_time) : null);
  field(dl, "max rss", d.max_rss ? bytes(d.max_rss) : null);
  if (d.energy) field(dl, "energy", `${joules(d.energy.joules)} at ${d.energy.watts?.toFixed?.(1) ?? "?"} W (${d.energy.source || "?"}, ${d.energy.measured ? "measured" : "modelled"})`);
  field(dl, "cause", d.cause);
  field(dl, "depends on", (d.deps || []).join(", "));
  field(dl, "inputs", (d.inputs || []).join(" "));
  field(dl, "staged", d.staging);
  field(dl, "timeout", d.timeout ? `${d.timeout} s` : null);
  if (d.env_keys?.length) field(dl, "env (names)", d.env_keys.join(", "));
  if (d.labels && Object.keys(d.labels).length) field(dl, "labels", Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(", "));
  field(dl, "workdir", d.workdir);
  box.append(dl, el("div", { class: "muted", text: "command" }), el("pre", { class: "command", text: d.command || "" }));
  const retries = (d.history || []).filter((h) => ["retry_wait", "failed", "ready"].includes(h.state) && h.old !== "pending" && h.old !== h.state);
  if (retries.length) {
    box.append(el("div", { class: "muted", text: "retries and their cause" }),
      el("ul", { class: "retries" }, ...retries.map((h) => el("li", { text: `attempt ${h.attempt} → ${h.state}: ${h.cause}` }))));
  }
  if (d.error) box.append(el("div", { class: "muted", text: "error" }), el("pre", { class: "error", text: d.error }));
  if (d.stderr_tail) box.append(el("div", { class: "muted", text: "stderr (tail)" }), el("pre", { class: "stderr", text: d.stderr_tail }));
  if (full) {
    if (d.outputs?.length) {
      box.append(el("h2", { text: `Outputs (${d.outputs_total ?? d.outputs.length})` }),
        el("ul", {}, ...d.outputs.map((o) => el("li", { class: "mono", text: `${o.path} (${bytes(o.size)})` }))));
    }
    box.append(el("h2", { text: "History" }), el("div", { class: "scroll" }, el("table", { id: "history" },
      el("thead", {}, el("tr", {}, ...["time", "attempt", "change", "agent", "cause"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...(d.history || []).map((h) => el("tr", {},
        el("td", { class: "num", text: clock(h.at) }), el("td", { class: "num", text: h.attempt }),
        el("td", { text: `${h.old} → ${h.state}` }), el("td", { text: h.agent || "—" }), el("td", { text: h.cause })))))));
  } else {
    box.append(el("p", {}, el("a", { href: taskUrl(d.run, d.name), class: "log-link", text: "full log and history →" })));
  }
  return box;
}

export function runPage(main, runId) {
  document.title = `dagon — ${runId}`;
  const head = el("div", { class: "panel", id: "run-head" });
  const dagBox = el("div", { class: "dagbox", id: "dag" });
  const ganttBox = el("div", { class: "ganttbox", id: "gantt" });
  const listBox = el("div", { class: "vlist", id: "tasks" });
  const aside = el("aside", { class: "panel", id: "detail" }, el("p", { class: "muted", text: "Select a task in the graph, the chart or the list." }));
  const search = el("input", { type: "search", placeholder: "filter tasks", "aria-label": "filter tasks by name" });
  const stateSel = el("select", { "aria-label": "filter tasks by state" }, el("option", { value: "", text: "all states" }), ...STATES.map((s) => el("option", { value: s, text: s })));
  const depthNote = el("button", { type: "button", hidden: true });
  main.append(head, el("div", { class: "grid" },
    el("div", {},
      el("div", { class: "panel" }, el("h2", { text: "Graph" }), legend(STATES), dagBox),
      el("div", { class: "panel" }, el("h2", { text: "Attempts per agent" }), legend(["running", "succeeded", "failed", "retried", "cancelled", "lost"]), ganttBox),
      el("div", { class: "panel" }, el("h2", { text: "Tasks" }), el("div", { class: "toolbar" }, search, stateSel, depthNote), listBox)),
    aside));
  let tasks = null, index = new Map(), dag = null, gantt = null, list = null, run = null, selected = null, control = false, h = null;
  getJSON("/api/info").then((info) => { control = info.control; if (run) drawHead(); }).catch(() => {});

  const drawHead = () => {
    const items = [el("h1", {}, el("span", { class: "mono", text: run.id }), " ", badge(run.state))];
    items.push(el("div", { class: "muted", text: `${run.workflow} · ${run.tasks} tasks · ${duration(runDuration(run))} · energy ${joules(run.energy)} · submitted ${clock(run.submitted_at)}` }));
    if (run.cause) items.push(el("div", { text: run.cause }));
    items.push(el("div", { class: "toolbar" }, countsBar(run.counts, run.tasks),
      el("span", { class: "muted", id: "counts-text", text: STATES.filter((s) => run.counts[s]).map((s) => `${s.replace("_", " ")} ${run.counts[s]}`).join(" · ") })));
    if (control) {
      const act = (what) => async () => { try { await post(`/api/runs/${encodeURIComponent(run.id)}/${what}`); } catch (e) { alert(e.message); } };
      const bar = el("div", { class: "toolbar" });
      if (run.state === "running") bar.append(el("button", { type: "button", class: "danger", id: "cancel", text: "Cancel run", on: { click: act("cancel") } }));
      else bar.append(el("button", { type: "button", id: "resume", text: "Resume run", on: { click: act("resume") } }));
      items.push(bar);
    }
    head.replaceChildren(...items);
  };
  let detailTimer = null;
  const showDetail = (name) => {
    selected = name;
    if (dag) dag.select(name);
    if (list) { list.selected = name; list.paint(); }
    for (const b of ganttBox.querySelectorAll(".bar.sel")) b.classList.remove("sel");
    getJSON(apiTask(runId, name)).then((d) => {
      if (selected !== name) return;
      const first = !aside.querySelector(".detail h2") || aside.dataset.task !== name;
      aside.replaceChildren(renderDetail(d));
      aside.dataset.task = name;
      if (first && innerWidth <= 900) aside.scrollIntoView({ block: "start" }); // one column: the details are below
    })
      .catch((e) => aside.replaceChildren(el("p", { class: "error", text: e.message })));
  };
  const refreshDetail = () => { if (!detailTimer && selected) detailTimer = setTimeout(() => { detailTimer = null; showDetail(selected); }, 500); };
  const onLayer = (layer) => { list.depth = layer; depthNote.hidden = false; depthNote.textContent = `depth ${layer} ✕`; list.refilter(); };
  depthNote.addEventListener("click", () => { list.depth = null; depthNote.hidden = true; list.refilter(); });
  search.addEventListener("input", () => { list.text = search.value; list.refilter(); });
  stateSel.addEventListener("change", () => { list.state = stateSel.value; list.refilter(); });

  h = stream({ page: "run", run: runId }, {
    snapshot(doc) {
      run = doc.run; tasks = doc.tasks; index = new Map(tasks.names.map((n, i) => [n, i]));
      drawHead();
      dag = new Dag(dagBox, tasks, { onSelect: showDetail, onLayer });
      gantt = new Gantt(ganttBox, { origin: run.submitted_at, onSelect: showDetail });
      if (run.finished_at) gantt.end = run.finished_at;
      gantt.set(doc.bars);
      list = new TaskList(listBox, tasks, showDetail);
      if (selected) showDetail(selected);
    },
    delta(doc) {
      if (!tasks) return;
      for (const [name, state, attempt, agent] of doc.tasks || []) {
        const i = index.get(name);
        if (i === undefined) { h.resync(); return; } // a task appeared (a mapped task expanded)
        const old = tasks.states[i];
        tasks.states[i] = state; tasks.attempts[i] = attempt; tasks.agents[i] = agent;
        dag.update(i, old);
        if (name === selected) refreshDetail();
      }
      if (doc.tasks?.length) list.changed();
      if (doc.run) { run = doc.run; if (run.finished_at) gantt.end = run.finished_at; drawHead(); }
      if (doc.bars?.length) gantt.set(doc.bars); else if (doc.run?.finished_at) gantt.schedule();
    },
    gone() { head.replaceChildren(el("p", { class: "error", text: `No run ${runId} on this coordinator or in its store.` })); },
  });
  setInterval(() => { if (run && run.state === "running") drawHead(); }, 1000);
}

// -- one task's log -------------------------------------------------------------------------
export function taskPage(main, runId, task) {
  document.title = `dagon — ${task}`;
  const box = el("div", { class: "panel", id: "task-log" }, el("p", { class: "muted", text: "loading…" }));
  main.append(el("p", {}, el("a", { href: runUrl(runId), text: `← run ${runId}` })), box, logPanel(runId, task));
  let timer = null;
  const load = () => getJSON(apiTask(runId, task)).then((d) => box.replaceChildren(renderDetail(d, { full: true })))
    .catch((e) => box.replaceChildren(el("p", { class: "error", text: e.message })));
  load();
  stream({ page: "run", run: runId }, {
    snapshot() {},
    delta(doc) { if ((doc.tasks || []).some((t) => t[0] === task) && !timer) timer = setTimeout(() => { timer = null; load(); }, 300); },
  });
}

// The attempt's whole stdout or stderr, fetched on demand from wherever it is (its agent's scratch).
function logPanel(runId, task) {
  const out = el("pre", { class: "log", id: "log-text" });
  const note = el("p", { class: "muted", id: "log-note" });
  const show = async (name) => {
    note.textContent = `loading ${name}…`;
    out.textContent = "";
    const r = await fetch(`${apiTask(runId, task)}/log/${name}`);
    const text = await r.text();
    out.dataset.stream = name;
    if (!r.ok) { note.textContent = `${name}: ${text.trim()}`; out.dataset.state = "error"; return; }
    const dropped = Number(r.headers.get("X-Dagon-Dropped") || 0);
    const kind = r.headers.get("X-Dagon-Log");
    note.textContent = `${name} of attempt ${r.headers.get("X-Dagon-Attempt")}` +
      (kind === "tail" ? " — only the coordinator's tail is left" : "") +
      (dropped ? ` — its last ${bytes(text.length)}, ${bytes(dropped)} before it not shown` : "") +
      (text ? "" : " — empty");
    out.textContent = text;
    out.dataset.state = kind;
  };
  const button = (name) => el("button", { type: "button", class: "log-button", dataset: { stream: name }, text: name, on: { click: () => show(name) } });
  return el("div", { class: "panel", id: "logs" }, el("h2", { text: "Output" }), el("div", {}, button("stdout"), " ", button("stderr")), note, out);
}

// -- agents ----------------------------------------------------------------------------------
const METRICS = [
  { key: "cpu", i: 1, label: "CPU", unit: "%", max: 100 },
  { key: "memory", i: 2, label: "memory", unit: "%", max: 100 },
  { key: "temperature", i: 3, label: "temperature", unit: "°C" },
  { key: "power", i: 4, label: "power", unit: "W" },
];

function chart(rows, m) {
  const points = rows.filter((r) => r[m.i] !== null && r[m.i] !== undefined);
  const last = points.length ? points[points.length - 1] : null;
  let unit = m.unit;
  if (m.key === "power" && last) unit += last[5] ? " measured" : " modelled";
  const value = last ? `${Number(last[m.i]).toFixed(1)} ${unit}` : "—";
  const box = el("div", { class: "chart", dataset: { metric: m.key } }, el("div", { class: "label" }, el("span", { text: m.label }), el("span", { class: "value", text: value })));
  if (points.length < 1) { box.append(el("div", { class: "none", text: m.key === "temperature" ? "no sensor" : "no reading" })); return box; }
  const t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
  const top = m.max ?? (Math.max(...points.map((r) => r[m.i])) * 1.15 || 1);
  const s = svg("svg", { viewBox: "0 0 100 40", preserveAspectRatio: "none" });
  const coords = points.map((r) => `${(((r[0] - t0) / (t1 - t0)) * 100).toFixed(2)},${(40 - (r[m.i] / top) * 38).toFixed(2)}`);
  if (coords.length === 1) coords.push(`100,${coords[0].split(",")[1]}`);
  s.append(svg("polyline", { points: coords.join(" ") }));
  box.append(s);
  return box;
}

export function agentsPage(main) {
  document.title = "dagon — agents";
  const grid = el("div", { class: "agents", id: "agents" });
  main.append(el("h1", { text: "Agents" }), el("p", { class: "muted", id: "agents-count" }), grid);
  const agents = new Map(), history = new Map(), cards = new Map();
  const card = (id) => {
    const a = agents.get(id), rows = history.get(id) || [];
    const c = el("section", { class: "panel agent", dataset: { agent: id, online: a.online } },
      el("h3", {}, el("span", { class: `dot ${a.online ? "on" : "off"}` }), el("span", { class: "mono", text: id })),
      el("div", { class: "muted", text: `${a.online ? "online" : "offline"} · ${a.hostname} · ${a.arch} · ${a.cpus} cpus · ${bytes(a.memory)}` }),
      el("div", { class: "slots", text: `slots in use ${a.in_use} of ${a.slots}` }),
      el("div", {}, ...a.runtimes.map((r) => el("span", { class: "tag", text: r }))),
      el("div", {}, ...Object.entries(a.labels).map(([k, v]) => el("span", { class: "tag", text: `${k}=${v}` }))),
      el("div", { class: "charts" }, ...METRICS.map((m) => chart(rows, m))));
    const old = cards.get(id);
    if (old) old.replaceWith(c); else grid.append(c);
    cards.set(id, c);
  };
  const count = () => {
    const on = [...agents.values()].filter((a) => a.online).length;
    document.getElementById("agents-count").textContent = `${on} online, ${agents.size - on} offline`;
  };
  const dirty = new Set();
  let queued = false;
  const redraw = (id) => {
    dirty.add(id);
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; for (const a of dirty) if (agents.has(a)) card(a); dirty.clear(); count(); });
  };
  stream({ page: "agents" }, {
    snapshot(doc) {
      agents.clear(); history.clear(); cards.clear(); grid.replaceChildren();
      for (const [id, rows] of Object.entries(doc.history)) history.set(id, rows);
      for (const a of doc.agents) { agents.set(a.id, a); card(a.id); }
      count();
    },
    delta(doc) {
      for (const a of doc.agents || []) { agents.set(a.id, a); redraw(a.id); }
      for (const [id, row] of doc.samples || []) {
        const rows = history.get(id) || [];
        rows.push(row);
        if (rows.length > 180) rows.shift();
        history.set(id, rows);
        if (agents.has(id)) redraw(id);
      }
    },
  });
}
