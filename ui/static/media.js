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

async function item3d(item) {
  const box = el("figure", { class: "media-item" });
  box.append(el("a", { href: item.url + "&download=1", download: "" }, `download ${item.kind} (${item.format}, ${fmtBytes(item.size)})`));
  if (item.kind === "object3D" && item.format === "json" && item.size < 5e6) {
    try {
      const res = await fetch(item.url);
      const doc = await res.json();
      const pts = Array.isArray(doc) ? doc : doc.points;
      if (Array.isArray(pts) && pts.length) {
        const Plotly = await loadPlotly();
        const sample = pts.length > 20000 ? pts.filter((_, i) => i % Math.ceil(pts.length / 20000) === 0) : pts;
        const plot = el("div", { class: "plot3d" });
        box.prepend(plot);
        Plotly.newPlot(plot, [{
          type: "scatter3d", mode: "markers", x: sample.map((p) => p[0]), y: sample.map((p) => p[1]), z: sample.map((p) => p[2]),
          marker: { size: 1.5, color: sample[0].length >= 6 ? sample.map((p) => `rgb(${p[3]},${p[4]},${p[5]})`) : sample.map((p) => p[2]) },
        }], { margin: { l: 0, r: 0, t: 0, b: 0 }, height: 320 }, { displaylogo: false });
      }
    } catch (e) {
      box.append(errorBox(e));
    }
  }
  if (item.caption) box.append(el("figcaption", {}, item.caption));
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
    shown = step;
    stepLabel.textContent = String(step);
    replaceQuery({ step });
    const res = await api(`runs/${enc(run.id)}/media`, { key, step }, ctx.abort.signal);
    if (!ctx.alive || shown !== step) return;
    const nodes = [];
    for (const [i, it] of res.items.entries()) nodes.push(await renderItem(it, i));
    items.replaceChildren(...nodes);
    items.dataset.step = String(step);
  }
  async function loadKey(keepStep) {
    const res = await api(`runs/${enc(run.id)}/media`, { key }, ctx.abort.signal);
    if (!ctx.alive) return;
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
