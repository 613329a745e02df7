// Media (images with masks and boxes, audio, video, HTML, 3-D objects, molecules, plotly
// figures) with a step slider, and histograms over time.

import { api, colorFor, el, errorBox, fmtBytes, loadPlotly, queryParams, replaceQuery } from "./util.js";

const enc = encodeURIComponent;

// A class id's colour in masks and boxes (id 0, the background, stays clear in masks).
const CLASS_COLORS = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194],
  [127, 127, 127], [188, 189, 34], [23, 190, 207],
];
export const classColor = (id) => CLASS_COLORS[((Number(id) % CLASS_COLORS.length) + CLASS_COLORS.length) % CLASS_COLORS.length];

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

// An image with its masks (a layer each, a toggle per layer and per class) and boxes drawn
// on a canvas over it.
function imageItem(item, index) {
  const canvas = el("canvas", { class: "media-canvas", dataset: { item: index } });
  const controls = el("div", { class: "media-controls" });
  const box = el("figure", { class: "media-item image" }, canvas, item.caption ? el("figcaption", {}, item.caption) : null, controls);
  const on = { masks: {}, boxes: {} }; // layer -> {enabled, classes: Set of hidden class ids}
  let base = null;
  const masks = {};
  const labelsOf = (layer) => layer.class_labels || {};

  const draw = () => {
    if (!base) return;
    const w = base.naturalWidth;
    const h = base.naturalHeight;
    canvas.width = w;
    canvas.height = h;
    const g = canvas.getContext("2d");
    g.drawImage(base, 0, 0);
    for (const [name, m] of Object.entries(masks)) {
      if (!on.masks[name].enabled || !m.ids) continue;
      const img = g.getImageData(0, 0, w, h);
      const px = img.data;
      const hidden = on.masks[name].hidden;
      for (let i = 0; i < w * h; i++) {
        const id = m.ids[i];
        if (id === 0 || hidden.has(String(id))) continue;
        const [r, gg, b] = classColor(id);
        px[i * 4] = (px[i * 4] * 2 + r * 3) / 5;
        px[i * 4 + 1] = (px[i * 4 + 1] * 2 + gg * 3) / 5;
        px[i * 4 + 2] = (px[i * 4 + 2] * 2 + b * 3) / 5;
      }
      g.putImageData(img, 0, 0);
    }
    g.lineWidth = Math.max(1, Math.round(Math.min(w, h) / 150));
    g.font = `${Math.max(10, Math.round(h / 25))}px sans-serif`;
    for (const [name, group] of Object.entries(item.boxes || {})) {
      if (!on.boxes[name].enabled) continue;
      const labels = group.class_labels || {};
      for (const b of group.box_data || []) {
        if (on.boxes[name].hidden.has(String(b.class_id))) continue;
        const p = b.position || {};
        const pixel = (b.domain || group.domain) === "pixel";
        let x0, x1, y0, y1;
        if ("minX" in p) [x0, x1, y0, y1] = [p.minX, p.maxX, p.minY, p.maxY];
        else [x0, x1, y0, y1] = [p.middle[0] - p.width / 2, p.middle[0] + p.width / 2, p.middle[1] - p.height / 2, p.middle[1] + p.height / 2];
        if (!pixel) [x0, x1, y0, y1] = [x0 * w, x1 * w, y0 * h, y1 * h];
        const [r, gg, bb] = classColor(b.class_id);
        g.strokeStyle = g.fillStyle = `rgb(${r},${gg},${bb})`;
        g.strokeRect(x0, y0, x1 - x0, y1 - y0);
        const text = b.box_caption || labels[String(b.class_id)] || String(b.class_id ?? "");
        if (text) g.fillText(text, x0 + 2, Math.max(y0 - 3, 12));
      }
    }
    canvas.dataset.drawn = String(performance.now());
  };

  const toggles = (kind, name, labels) => {
    const state = (on[kind][name] = { enabled: true, hidden: new Set() });
    const layer = el("input", { type: "checkbox", checked: true, dataset: { kind, layer: name } });
    layer.onchange = () => { state.enabled = layer.checked; draw(); };
    const classes = Object.entries(labels).map(([id, label]) => {
      const c = el("input", { type: "checkbox", checked: true, dataset: { kind, layer: name, class: id } });
      c.onchange = () => { c.checked ? state.hidden.delete(id) : state.hidden.add(id); draw(); };
      const [r, g, b] = classColor(id);
      return el("label", { class: "class-toggle" }, c, el("i", { class: "swatch", style: `background:rgb(${r},${g},${b})` }), label);
    });
    controls.append(el("div", { class: "layer" }, el("label", {}, layer, ` ${kind === "masks" ? "mask" : "boxes"} ${name}`), classes));
  };
  for (const [name, m] of Object.entries(item.masks || {})) toggles("masks", name, labelsOf(m));
  for (const [name, g] of Object.entries(item.boxes || {})) toggles("boxes", name, g.class_labels || {});

  (async () => {
    base = await loadImage(item.url);
    for (const [name, m] of Object.entries(item.masks || {})) {
      const img = await loadImage(m.url);
      const c = document.createElement("canvas");
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      const px = g.getImageData(0, 0, c.width, c.height).data;
      const ids = new Uint8Array(c.width * c.height);
      for (let i = 0; i < ids.length; i++) ids[i] = px[i * 4]; // a grayscale PNG of class ids
      masks[name] = { ids };
    }
    draw();
  })().catch((e) => box.append(errorBox(e)));
  return box;
}

// Atoms of a molecule file, where reading them is cheap: PDB/PQR (ATOM/HETATM records), SDF/MOL
// (a V2000 atom block), MOL2 (the ATOM section) and GRO; null for the other formats.
export function moleculeAtoms(text, format) {
  const atoms = [];
  const lines = text.split(/\r?\n/);
  if (format === "pdb" || format === "pqr") {
    for (const l of lines) {
      if (!l.startsWith("ATOM") && !l.startsWith("HETATM")) continue;
      const f = format === "pqr" ? l.trim().split(/\s+/) : null;
      const xyz = f ? f.slice(-5, -2).map(Number) : [l.slice(30, 38), l.slice(38, 46), l.slice(46, 54)].map(Number);
      // the element columns when present, else the atom name's first letter ("CA" is a carbon)
      const given = f ? "" : l.slice(76, 78).trim();
      const element = given || (f ? f[2] : l.slice(12, 16)).replace(/[^A-Za-z]/g, "").slice(0, 1);
      atoms.push([...xyz, element]);
    }
  } else if (format === "sdf" || format === "sd" || format === "mol") {
    const counts = lines[3] || "";
    const n = Number(counts.slice(0, 3));
    if (!counts.includes("V2000") || !(n > 0)) return null;
    for (const l of lines.slice(4, 4 + n)) {
      const f = l.trim().split(/\s+/);
      atoms.push([Number(f[0]), Number(f[1]), Number(f[2]), f[3]]);
    }
  } else if (format === "mol2") {
    let inAtoms = false;
    for (const l of lines) {
      if (l.startsWith("@<TRIPOS>")) inAtoms = l.startsWith("@<TRIPOS>ATOM");
      else if (inAtoms && l.trim()) {
        const f = l.trim().split(/\s+/);
        atoms.push([Number(f[2]), Number(f[3]), Number(f[4]), (f[5] || f[1]).split(".")[0]]);
      }
    }
  } else if (format === "gro") {
    const n = Number(lines[1]);
    if (!(n > 0)) return null;
    for (const l of lines.slice(2, 2 + n)) {
      const xyz = [l.slice(20, 28), l.slice(28, 36), l.slice(36, 44)].map((v) => Number(v) * 10); // nm -> Å
      atoms.push([...xyz, l.slice(10, 15).trim().replace(/[^A-Za-z]/g, "").slice(0, 1)]);
    }
  } else return null;
  const ok = atoms.filter((a) => a.slice(0, 3).every(Number.isFinite));
  return ok.length ? ok : null;
}

// CPK colours of the common elements (others grey).
const ELEMENT_COLORS = {
  H: "#b8b8b8", C: "#404040", N: "#3050f8", O: "#ff0d0d", S: "#e0c030", P: "#ff8000", F: "#90e050", Cl: "#1ff01f",
  Br: "#a62929", I: "#940094", Fe: "#e06633", Mg: "#8aff00", Ca: "#3dff00", Zn: "#7d80b0", Na: "#ab5cf2", K: "#8f40d4",
};
const elementColor = (e) => ELEMENT_COLORS[e] || ELEMENT_COLORS[e.charAt(0).toUpperCase() + e.slice(1).toLowerCase()] || ELEMENT_COLORS[e.charAt(0).toUpperCase()] || "#a0a0a0";

async function item3d(item) {
  const box = el("figure", { class: "media-item" });
  box.append(el("a", { href: item.url + "&download=1", download: "" }, `download ${item.kind} (${item.format}, ${fmtBytes(item.size)})`));
  if (item.size < 5e6) {
    try {
      let trace = null;
      if (item.kind === "object3D" && item.format === "json") {
        const doc = await (await fetch(item.url)).json();
        const pts = Array.isArray(doc) ? doc : doc.points;
        if (Array.isArray(pts) && pts.length) {
          const sample = pts.length > 20000 ? pts.filter((_, i) => i % Math.ceil(pts.length / 20000) === 0) : pts;
          trace = {
            type: "scatter3d", mode: "markers", x: sample.map((p) => p[0]), y: sample.map((p) => p[1]), z: sample.map((p) => p[2]),
            marker: { size: 1.5, color: sample[0].length >= 6 ? sample.map((p) => `rgb(${p[3]},${p[4]},${p[5]})`) : sample.map((p) => p[2]) },
          };
        }
      } else if (item.kind === "molecule") {
        const atoms = moleculeAtoms(await (await fetch(item.url)).text(), item.format);
        if (atoms) {
          trace = {
            type: "scatter3d", mode: "markers", x: atoms.map((a) => a[0]), y: atoms.map((a) => a[1]), z: atoms.map((a) => a[2]),
            text: atoms.map((a) => a[3]), hoverinfo: "text",
            marker: { size: atoms.length > 2000 ? 2 : 5, color: atoms.map((a) => elementColor(a[3])), line: { width: 0 } },
          };
          box.dataset.atoms = String(atoms.length);
        }
      }
      if (trace) {
        const Plotly = await loadPlotly();
        const plot = el("div", { class: "plot3d" });
        box.prepend(plot);
        const scene = item.kind === "molecule" ? { xaxis: { visible: false }, yaxis: { visible: false }, zaxis: { visible: false }, aspectmode: "data" } : {};
        Plotly.newPlot(plot, [trace], { margin: { l: 0, r: 0, t: 0, b: 0 }, height: 320, scene }, { displaylogo: false });
      }
    } catch (e) {
      box.append(errorBox(e));
    }
  }
  if (item.caption) box.append(el("figcaption", {}, item.caption));
  return box;
}

// A chart computed by the SDK (`plot.line`, `roc_curve`, `confusion_matrix`, ...): its rows
// (columns and data, a JSON file) drawn by its kind and fields.
export function chartFigure(spec, body) {
  const f = spec.fields || {};
  const col = (name) => body.columns.indexOf(name);
  const rows = body.data;
  const pick = (name) => rows.map((r) => r[col(name)]);
  const layout = {
    title: spec.title ? { text: spec.title, font: { size: 13 } } : undefined,
    margin: { l: 60, r: 10, t: spec.title ? 30 : 8, b: 44 }, height: 320, font: { size: 11 },
  };
  const axes = (x, y) => {
    layout.xaxis = { title: { text: x }, automargin: true };
    layout.yaxis = { title: { text: y }, automargin: true };
  };
  let data;
  switch (spec.kind) {
    case "line":
    case "line_series":
    case "roc":
    case "pr": {
      const groups = new Map();
      const sx = col(f.x);
      const sy = col(f.y);
      const ss = f.stroke ? col(f.stroke) : -1;
      for (const r of rows) {
        const g = ss >= 0 ? String(r[ss]) : f.y;
        if (!groups.has(g)) groups.set(g, { x: [], y: [] });
        groups.get(g).x.push(r[sx]);
        groups.get(g).y.push(r[sy]);
      }
      data = [...groups].map(([name, g]) => ({ type: "scatter", mode: "lines", name, x: g.x, y: g.y, line: { width: 1.5 } }));
      if (spec.kind === "roc") data.push({ type: "scatter", mode: "lines", x: [0, 1], y: [0, 1], line: { dash: "dot", color: "#999", width: 1 }, hoverinfo: "skip", showlegend: false });
      layout.showlegend = groups.size > 1;
      axes(f.x, f.y);
      break;
    }
    case "scatter":
      data = [{ type: "scatter", mode: "markers", x: pick(f.x), y: pick(f.y), marker: { size: 5 } }];
      axes(f.x, f.y);
      break;
    case "bar":
      data = [{ type: "bar", x: pick(f.label).map(String), y: pick(f.value) }];
      axes(f.label, f.value);
      break;
    case "histogram":
      data = [{ type: "histogram", x: pick(f.value) }];
      axes(f.value, "count");
      break;
    case "confusion_matrix":
    case "heatmap": {
      const xs = [...new Set(pick(f.x).map(String))];
      const ys = [...new Set(pick(f.y).map(String))];
      const z = ys.map(() => xs.map(() => null));
      for (const r of rows) z[ys.indexOf(String(r[col(f.y)]))][xs.indexOf(String(r[col(f.x)]))] = r[col(f.value)];
      const text = spec.kind === "confusion_matrix" || f.show_text;
      data = [{ type: "heatmap", x: xs, y: ys, z, colorscale: "Blues", reversescale: true, texttemplate: text ? "%{z}" : undefined, hoverongaps: false }];
      axes(f.x, f.y);
      layout.yaxis.autorange = "reversed";
      break;
    }
    default:
      return null;
  }
  return { data, layout };
}

async function chartItem(item, cap) {
  const box = el("figure", { class: "media-item chart" });
  const body = await (await fetch(item.url)).json();
  const fig = chartFigure(item.spec || {}, body);
  if (!fig) {
    box.append(el("pre", {}, JSON.stringify(body).slice(0, 2000)));
    if (cap) box.append(cap);
    return box;
  }
  const Plotly = await loadPlotly();
  const plot = el("div", { class: "plot" });
  box.append(plot, el("a", { href: item.url + "&download=1", download: "" }, "download data (json)"));
  if (cap) box.append(cap);
  requestAnimationFrame(() => Plotly.newPlot(plot, fig.data, fig.layout, { displaylogo: false, responsive: true }).then(() => (box.dataset.drawn = "1")));
  return box;
}

async function renderItem(item, i) {
  const cap = item.caption ? el("figcaption", {}, item.caption) : null;
  switch (item.kind) {
    case "image":
      return imageItem(item, i);
    case "audio":
      return el("figure", { class: "media-item" }, el("audio", { controls: true, src: item.url, preload: "metadata" }), cap);
    case "video":
      return el("figure", { class: "media-item" },
        item.format === "gif" ? el("img", { src: item.url }) : el("video", { controls: true, src: item.url, preload: "metadata" }), cap);
    case "html":
      return el("figure", { class: "media-item wide" }, el("iframe", { sandbox: "allow-scripts", src: item.url, class: "html" }), cap);
    case "object3D":
    case "molecule":
      return item3d(item);
    case "plotly": {
      const Plotly = await loadPlotly();
      const fig = await (await fetch(item.url)).json();
      const plot = el("div", { class: "plot" });
      const box = el("figure", { class: "media-item wide" }, plot, cap);
      requestAnimationFrame(() => Plotly.newPlot(plot, fig.data || [], { ...(fig.layout || {}), height: 320 }, { displaylogo: false, responsive: true }));
      return box;
    }
    case "chart":
      return chartItem(item, cap);
    case "value":
      return el("figure", { class: "media-item" }, el("pre", {}, JSON.stringify(item.value)));
    default:
      return el("figure", { class: "media-item" }, item.url ? el("a", { href: item.url + "&download=1" }, `download ${item.kind}`) : el("pre", {}, JSON.stringify(item.spec || item, null, 1).slice(0, 2000)), cap);
  }
}

function keyPicker(keys, chosen, onchange, name) {
  const sel = el("select", { name }, keys.map((k) => el("option", { value: k }, k)));
  sel.value = chosen;
  sel.onchange = () => onchange(sel.value);
  return sel;
}

export async function mediaView(ctx, root, run) {
  const keys = Object.keys(run.media);
  if (!keys.length) {
    root.append(el("p", { class: "muted" }, "This run logged no media."));
    return;
  }
  const q = queryParams();
  let key = keys.includes(q.key) ? q.key : keys[0];
  const slider = el("input", { type: "range", name: "step", min: 0, max: 0, value: 0, class: "wide" });
  const stepLabel = el("span", { class: "mono" });
  const items = el("div", { class: "media-grid", id: "media" });
  root.append(el("div", { class: "toolbar" }, keyPicker(keys, key, (k) => { key = k; replaceQuery({ key: k, step: "" }); loadKey(); }, "key"), "step ", slider, stepLabel), items);
  let steps = [];
  let shown = null;
  async function show(step) {
    const k = key;
    const asked = (shown = `${k}@${step}`); // a later key or step wins over this one
    stepLabel.textContent = String(step);
    replaceQuery({ step });
    const res = await api(`runs/${enc(run.id)}/media`, { key: k, step }, ctx.abort.signal);
    if (!ctx.alive || shown !== asked) return;
    const nodes = [];
    for (const [i, it] of res.items.entries()) nodes.push(await renderItem(it, i));
    if (shown !== asked) return;
    items.replaceChildren(...nodes);
    items.dataset.step = String(step);
    items.dataset.key = k;
  }
  async function loadKey(keepStep) {
    shown = null; // what is still on its way for another key is not shown
    const k = key;
    const res = await api(`runs/${enc(run.id)}/media`, { key: k }, ctx.abort.signal);
    if (!ctx.alive || key !== k) return;
    const atEnd = !steps.length || Number(slider.value) === steps.length - 1;
    steps = res.steps;
    slider.max = Math.max(0, steps.length - 1);
    let idx = steps.length - 1;
    if (keepStep !== undefined && steps.includes(keepStep)) idx = steps.indexOf(keepStep);
    else if (keepStep !== undefined && !atEnd) return;
    slider.value = idx;
    if (steps.length) await show(steps[idx]);
  }
  slider.oninput = () => show(steps[Number(slider.value)]);
  await loadKey(q.step !== undefined ? Number(q.step) : undefined);
  if (run.state === "running") {
    ctx.every(3000, async () => {
      const before = steps.length;
      const res = await api(`runs/${enc(run.id)}/media`, { key }, ctx.abort.signal);
      if (!ctx.alive || res.steps.length === before) return;
      const follow = Number(slider.value) === before - 1;
      steps = res.steps;
      slider.max = steps.length - 1;
      if (follow) {
        slider.value = steps.length - 1;
        await show(steps[steps.length - 1]);
      }
    });
  }
}

export async function histogramsView(ctx, root, run) {
  const keys = run.histograms;
  if (!keys.length) {
    root.append(el("p", { class: "muted" }, "This run logged no histograms."));
    return;
  }
  const Plotly = await loadPlotly();
  const q = queryParams();
  let key = keys.includes(q.key) ? q.key : keys[0];
  const heat = el("div", { class: "plot", id: "heatmap" });
  const one = el("div", { class: "plot", id: "histogram" });
  const slider = el("input", { type: "range", name: "step", min: 0, max: 0, value: 0, class: "wide" });
  const stepLabel = el("span", { class: "mono" });
  root.append(
    el("div", { class: "toolbar" }, keyPicker(keys, key, (k) => { key = k; replaceQuery({ key: k }); load(); }, "key")),
    el("div", { class: "panel" }, el("div", { class: "panel-title" }, "bins by step"), heat),
    el("div", { class: "toolbar" }, "step ", slider, stepLabel),
    el("div", { class: "panel" }, one),
  );
  ctx.onClose(() => { Plotly.purge(heat); Plotly.purge(one); });
  let res = null;
  const showOne = (i) => {
    const h = res.raw[i];
    stepLabel.textContent = String(h.step);
    const centers = h.values.map((_, j) => (h.bins[j] + h.bins[j + 1]) / 2);
    const widths = h.values.map((_, j) => h.bins[j + 1] - h.bins[j]);
    Plotly.react(one, [{ type: "bar", x: centers, y: h.values, width: widths, marker: { color: colorFor(run.id) } }],
      { margin: { l: 50, r: 10, t: 6, b: 30 }, height: 240, bargap: 0, font: { size: 11 } }, { displaylogo: false, responsive: true });
    one.dataset.step = String(h.step);
  };
  async function load() {
    res = await api(`runs/${enc(run.id)}/histograms`, { key }, ctx.abort.signal);
    if (!ctx.alive) return;
    if (!res.steps.length) {
      heat.replaceChildren(el("p", { class: "muted" }, "no histograms"));
      return;
    }
    const centers = res.edges.slice(0, -1).map((e, j) => (e + res.edges[j + 1]) / 2);
    const z = centers.map((_, j) => res.z.map((col) => col[j]));
    Plotly.react(heat, [{ type: "heatmap", x: res.steps, y: centers, z, colorscale: "Viridis", hovertemplate: "step %{x}<br>%{y:.4g}: %{z:.4g}<extra></extra>" }],
      { margin: { l: 50, r: 10, t: 6, b: 30 }, height: 300, xaxis: { title: { text: "step" } }, font: { size: 11 } }, { displaylogo: false, responsive: true });
    slider.max = res.raw.length - 1;
    slider.value = res.raw.length - 1;
    showOne(res.raw.length - 1);
  }
  slider.oninput = () => showOne(Number(slider.value));
  await load();
}
