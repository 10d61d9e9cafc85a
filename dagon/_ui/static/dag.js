// The run's DAG as SVG: one node per task, columns by depth, coloured by state and updated in
// place. Past FULL_LIMIT tasks it collapses to one block per depth (counts per state), which
// stays cheap at 10,000+ tasks; a click on a block filters the task list to that depth.
import { svg, STATES } from "./app.js";

export const FULL_LIMIT = 1500; // tasks drawn one by one
const EDGE_LIMIT = 6000; // edges drawn (beyond: nodes only)
const W = 132, H = 22, GX = 40, GY = 6, PAD = 8;

export class Dag {
  constructor(box, tasks, { onSelect, onLayer }) {
    this.box = box;
    this.tasks = tasks; // column-wise: names, states, layer, deps
    this.onSelect = onSelect;
    this.onLayer = onLayer;
    this.full = tasks.names.length <= FULL_LIMIT;
    this.nodes = new Map();
    this.layerCounts = [];
    this.render();
  }

  render() {
    const t = this.tasks;
    const n = t.names.length;
    const byLayer = [];
    for (let i = 0; i < n; i++) (byLayer[t.layer[i]] ||= []).push(i);
    const root = this.full ? this.renderFull(byLayer) : this.renderCollapsed(byLayer);
    root.setAttribute("id", "dag-svg");
    this.box.replaceChildren(root);
  }

  renderFull(byLayer) {
    const t = this.tasks;
    const pos = new Array(t.names.length);
    let rows = 1;
    byLayer.forEach((members, layer) => {
      (members || []).forEach((i, row) => { pos[i] = [PAD + layer * (W + GX), PAD + row * (H + GY)]; });
      rows = Math.max(rows, (members || []).length);
    });
    const width = PAD * 2 + byLayer.length * (W + GX) - GX;
    const height = PAD * 2 + rows * (H + GY) - GY;
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "task graph" });
    const edges = svg("g", { class: "edges" });
    let drawn = 0;
    for (let i = 0; i < t.names.length && drawn < EDGE_LIMIT; i++) {
      for (const d of t.deps[i]) {
        if (!pos[d] || drawn++ >= EDGE_LIMIT) continue;
        const [x1, y1] = [pos[d][0] + W, pos[d][1] + H / 2], [x2, y2] = [pos[i][0], pos[i][1] + H / 2];
        const mx = (x1 + x2) / 2;
        edges.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
      }
    }
    root.append(edges);
    const nodes = svg("g", { class: "nodes" });
    t.names.forEach((name, i) => {
      const g = svg("g", { class: `node s-${t.states[i]}`, transform: `translate(${pos[i][0]},${pos[i][1]})`, dataset: { task: name } });
      const title = svg("title", { text: `${name}: ${t.states[i]}` });
      g.append(svg("rect", { width: W, height: H }), svg("text", { x: 6, y: 15, text: name.length > 19 ? `${name.slice(0, 18)}…` : name }), title);
      g.addEventListener("click", () => this.onSelect(name));
      nodes.append(g);
      this.nodes.set(name, g);
    });
    root.append(nodes);
    return root;
  }

  renderCollapsed(byLayer) {
    const t = this.tasks;
    const BW = 150, BH = 64;
    const width = PAD * 2 + byLayer.length * (BW + GX) - GX;
    const root = svg("svg", { width, height: BH + PAD * 2, viewBox: `0 0 ${width} ${BH + PAD * 2}`, role: "img", "aria-label": "task graph by depth" });
    this.layerCounts = byLayer.map((members) => {
      const c = {};
      for (const i of members || []) c[t.states[i]] = (c[t.states[i]] || 0) + 1;
      return c;
    });
    this.blocks = byLayer.map((members, layer) => {
      const x = PAD + layer * (BW + GX);
      if (layer > 0) root.append(svg("path", { class: "edge", d: `M${x - GX},${PAD + BH / 2} L${x},${PAD + BH / 2}` }));
      const g = svg("g", { class: "layer-node", transform: `translate(${x},${PAD})`, dataset: { layer } });
      g.append(svg("rect", { class: "frame", width: BW, height: BH }));
      g.append(svg("text", { x: 6, y: 16, text: `depth ${layer}: ${(members || []).length} tasks` }));
      const parts = svg("g", { transform: "translate(6,26)" });
      g.append(parts, svg("text", { x: 6, y: 56, class: "sum", text: "" }));
      g.addEventListener("click", () => this.onLayer(layer));
      root.append(g);
      return { g, parts, total: (members || []).length };
    });
    this.blocks.forEach((_, layer) => this.paintLayer(layer));
    return root;
  }

  paintLayer(layer) {
    const block = this.blocks[layer];
    const counts = this.layerCounts[layer];
    block.parts.replaceChildren();
    let x = 0;
    const width = 138;
    for (const s of STATES) {
      if (!counts[s]) continue;
      const w = (width * counts[s]) / Math.max(block.total, 1);
      block.parts.append(svg("rect", { class: `part s-${s}`, x, y: 0, width: Math.max(w, 0.5), height: 14 }));
      x += w;
    }
    const text = STATES.filter((s) => counts[s]).map((s) => `${s.slice(0, 4)} ${counts[s]}`).join(" · ");
    block.g.querySelector("text.sum").textContent = text.length > 26 ? `${text.slice(0, 25)}…` : text;
  }

  /** A task changed state (index i, its old state). */
  update(i, old) {
    const t = this.tasks;
    if (this.full) {
      const g = this.nodes.get(t.names[i]);
      if (g) {
        g.setAttribute("class", `node s-${t.states[i]}${g.classList.contains("sel") ? " sel" : ""}`);
        g.querySelector("title").textContent = `${t.names[i]}: ${t.states[i]}`;
      }
      return;
    }
    const counts = this.layerCounts[t.layer[i]];
    if (!counts) return;
    counts[old] = (counts[old] || 1) - 1;
    counts[t.states[i]] = (counts[t.states[i]] || 0) + 1;
    this.dirtyLayers ||= new Set();
    this.dirtyLayers.add(t.layer[i]);
    if (!this.paintQueued) {
      this.paintQueued = true;
      requestAnimationFrame(() => {
        this.paintQueued = false;
        for (const layer of this.dirtyLayers) this.paintLayer(layer);
        this.dirtyLayers.clear();
      });
    }
  }

  select(name) {
    for (const g of this.box.querySelectorAll(".node.sel")) g.classList.remove("sel");
    const g = this.nodes.get(name);
    if (g) { g.classList.add("sel"); g.scrollIntoView?.({ block: "nearest", inline: "nearest" }); }
  }
}
