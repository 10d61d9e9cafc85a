// Gantt chart as SVG: one lane per agent, one bar per task attempt (keyed task + attempt),
// concurrent attempts of one agent on rows of their own, coloured by how the attempt ended
// (the same rules as `dagon report`). Redrawn at most a few times a second.
import { svg, now } from "./app.js";

const ROW = 20, LANE_PAD = 3, LABEL = 140, MIN_INTERVAL = 400;
export const SVG_LIMIT = 2000; // bars drawn as SVG elements; beyond, one canvas (a 10,000-task run)

export class Gantt {
  constructor(box, { origin, onSelect }) {
    this.box = box;
    this.origin = origin;
    this.onSelect = onSelect;
    this.bars = new Map(); // "task\u0000attempt" -> [task, attempt, agent, start, end, state]
    this.last = 0;
    this.queued = false;
    this.end = null; // the run's end, once it ended
  }

  set(rows) { for (const b of rows) this.bars.set(`${b[0]}\u0000${b[1]}`, b); this.schedule(); }

  schedule() {
    if (this.queued) return;
    this.queued = true;
    // A redraw costs the browser time proportional to the bars: wait at least ten times the last
    // one took (a busy page on a small machine must not starve the coordinator next to it).
    const gap = Math.max(MIN_INTERVAL, 10 * (this.took || 0));
    const wait = Math.max(0, gap - (performance.now() - this.last));
    setTimeout(() => requestAnimationFrame(() => {
      this.queued = false;
      const t0 = performance.now();
      this.render();
      this.last = performance.now();
      this.took = this.last - t0;
    }), wait);
  }

  render() {
    const bars = [...this.bars.values()].sort((a, b) => a[3] - b[3]);
    const t = this.end ?? now();
    const lanes = [];
    const laneOf = new Map();
    for (const b of bars) if (!laneOf.has(b[2])) { laneOf.set(b[2], lanes.length); lanes.push({ agent: b[2], ends: [], items: [] }); }
    let last = this.origin + 0.001;
    for (const b of bars) {
      const end = b[5] === "running" ? Math.max(t, b[3]) : b[4];
      last = Math.max(last, end);
      const lane = lanes[laneOf.get(b[2])];
      let row = lane.ends.findIndex((e) => e <= b[3]);
      if (row < 0) { row = lane.ends.length; lane.ends.push(end); } else lane.ends[row] = end;
      lane.items.push([b, row, end]);
    }
    const width = Math.max(this.box.clientWidth || 800, 480);
    const span = Math.max(last - this.origin, 0.001);
    const scale = (width - LABEL - 16) / span;
    if (bars.length > SVG_LIMIT) this.paintCanvas(lanes, width, span, scale);
    else this.paintSvg(lanes, width, span, scale);
    if (!this.end && bars.some((b) => b[5] === "running")) setTimeout(() => this.schedule(), 1000);
  }

  paintSvg(lanes, width, span, scale) {
    let y = 0;
    const root = svg("svg", { id: "gantt-svg", width, role: "img", "aria-label": "attempts per agent over time" });
    lanes.forEach((lane, i) => {
      const h = Math.max(1, lane.ends.length) * ROW + 2 * LANE_PAD;
      const g = svg("g", { class: "lane", dataset: { agent: lane.agent } });
      g.append(svg("rect", { class: i % 2 ? "lane-b" : "lane-a", x: 0, y, width, height: h }));
      g.append(svg("text", { x: 4, y: y + h / 2 + 4, text: lane.agent.length > 20 ? `${lane.agent.slice(0, 19)}…` : lane.agent }));
      for (const [b, row, end] of lane.items) {
        const rect = svg("rect", {
          class: `bar s-${b[5]}`, x: LABEL + (b[3] - this.origin) * scale, y: y + LANE_PAD + row * ROW + 2,
          width: Math.max(1, (end - b[3]) * scale), height: ROW - 4, rx: 2,
          dataset: { task: b[0], attempt: b[1], agent: b[2], state: b[5] },
        });
        rect.append(svg("title", { text: `${b[0]} (attempt ${b[1]}) on ${b[2]}: ${b[5]}, ${(end - b[3]).toFixed(2)} s` }));
        rect.addEventListener("click", () => this.onSelect(b[0]));
        g.append(rect);
      }
      root.append(g);
      y += h;
    });
    for (let k = 0; k <= 5; k++) {
      const s = (span * k) / 5;
      root.append(svg("text", { class: "axis", x: Math.min(LABEL + s * scale, width - 30), y: y + 14, "text-anchor": k ? "middle" : "start", text: `${s.toFixed(1)} s` }));
    }
    root.setAttribute("height", y + 22);
    root.setAttribute("viewBox", `0 0 ${width} ${y + 22}`);
    this.box.replaceChildren(root);
  }

  paintCanvas(lanes, width, span, scale) {
    const heights = lanes.map((l) => Math.max(1, l.ends.length) * 4 + 2 * LANE_PAD);
    const height = heights.reduce((a, b) => a + b, 0) + 22;
    let canvas = this.box.querySelector("canvas#gantt-canvas");
    if (!canvas) { canvas = document.createElement("canvas"); canvas.id = "gantt-canvas"; this.box.replaceChildren(canvas); }
    const ratio = window.devicePixelRatio || 1;
    canvas.width = width * ratio; canvas.height = height * ratio;
    canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    const css = getComputedStyle(document.documentElement);
    const colour = (name) => css.getPropertyValue(`--${name}`).trim() || "#888";
    const hits = [];
    let y = 0;
    lanes.forEach((lane, i) => {
      ctx.fillStyle = colour(i % 2 ? "lane-b" : "lane-a");
      ctx.fillRect(0, y, width, heights[i]);
      ctx.fillStyle = colour("fg");
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillText(lane.agent.slice(0, 20), 4, y + Math.min(heights[i], 20) / 2 + 4);
      for (const [b, row, end] of lane.items) {
        const x = LABEL + (b[3] - this.origin) * scale, top = y + LANE_PAD + row * 4;
        ctx.fillStyle = colour(b[5]);
        ctx.fillRect(x, top, Math.max(1, (end - b[3]) * scale), 3);
        hits.push([x, top, Math.max(1, (end - b[3]) * scale), b[0]]);
      }
      y += heights[i];
    });
    ctx.fillStyle = colour("muted");
    for (let k = 0; k <= 5; k++) ctx.fillText(`${((span * k) / 5).toFixed(1)} s`, Math.min(LABEL + ((span * k) / 5) * scale, width - 30), y + 14);
    canvas.onclick = (e) => {
      const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
      const hit = hits.find(([x, t, w]) => px >= x - 1 && px <= x + w + 1 && py >= t - 1 && py <= t + 4);
      if (hit) this.onSelect(hit[3]);
    };
  }
}
