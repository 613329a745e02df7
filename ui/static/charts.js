// Charts: one panel per metric, grouped by prefix, drawn when scrolled into view, from the
// read path's buckets (min/max band and the last value per bucket), re-queried at full
// resolution on zoom, grown live from the run's tail (only rows after a cursor).

import { api, colorFor, el, errorBox, loadPlotly, queryParams, replaceQuery, withAlpha } from "./util.js";

// more points than this in a panel: WebGL traces. Below it SVG lines draw faster (plotly.js
// simplifies them), also where WebGL is software-rendered: remote desktops, VMs, login nodes
const WEBGL_POINTS = 60000;
const POLL_MS = 1000; // live runs: a cursor poll per second
const BAND_RUNS = 10; // more runs than this in a panel: lines only (a hundred bands hide each other)

export function groupOf(key) {
  const i = key.indexOf("/");
  return i > 0 ? key.slice(0, i) : "charts";
}

// Exponential moving average, debiased as TensorBoard does (the first points are not pulled
// toward zero), skipping non-finite values.
export function ema(ys, weight) {
  const out = new Array(ys.length);
  let acc = 0;
  let n = 0;
  for (let i = 0; i < ys.length; i++) {
    const y = ys[i];
    if (y === null || !Number.isFinite(y)) {
      out[i] = y;
      continue;
    }
    acc = acc * weight + (1 - weight) * y;
    n++;
    out[i] = acc / (1 - Math.pow(weight, n));
  }
  return out;
}

export function runningAverage(ys, window) {
  const out = new Array(ys.length);
  const win = [];
  let sum = 0;
  for (let i = 0; i < ys.length; i++) {
    const y = ys[i];
    if (y === null || !Number.isFinite(y)) {
      out[i] = y;
      continue;
    }
    win.push(y);
    sum += y;
    if (win.length > window) sum -= win.shift();
    out[i] = sum / win.length;
  }
  return out;
}

// One run's points in a panel: equal-length arrays, one entry per bucket.
function seriesFrom(b, xAxis) {
  const n = b.x.length;
  return {
    x: b.x.slice(),
    step: (b.step || b.x).slice(),
    last: b.last.slice(),
    min: (b.min || b.last).slice(),
    max: (b.max || b.last).slice(),
    start: b.x.slice(),
    exact: b.exact,
    width: 0,
    n,
    xAxis,
  };
}

// A live point joins the last bucket while it is narrower than the panel's bucket width;
// past twice the samples asked for, neighbouring buckets merge (the width doubles).
function appendPoint(s, x, step, v, samples) {
  const n = s.x.length;
  if (s.width > 0 && n > 0 && x - s.start[n - 1] < s.width) {
    s.x[n - 1] = x;
    s.step[n - 1] = step;
    s.last[n - 1] = v;
    if (v < s.min[n - 1]) s.min[n - 1] = v;
    if (v > s.max[n - 1]) s.max[n - 1] = v;
    return;
  }
  s.x.push(x);
  s.step.push(step);
  s.last.push(v);
  s.min.push(v);
  s.max.push(v);
  s.start.push(x);
  if (s.x.length > 2 * samples) {
    const span = s.x[s.x.length - 1] - s.start[0];
    s.width = Math.max(s.width * 2, span / samples);
    const m = { x: [], step: [], last: [], min: [], max: [], start: [] };
    for (let i = 0; i < s.x.length; i++) {
      const j = m.x.length - 1;
      if (j >= 0 && s.x[i] - m.start[j] < s.width) {
        m.x[j] = s.x[i];
        m.step[j] = s.step[i];
        m.last[j] = s.last[i];
        m.min[j] = Math.min(m.min[j], s.min[i]);
        m.max[j] = Math.max(m.max[j], s.max[i]);
      } else {
        for (const k of Object.keys(m)) m[k].push(s[k][i]);
      }
    }
    Object.assign(s, m);
    s.exact = false;
  }
}

// The charts of `runs` ([{id, name, created_at, state, last_step}]) for `keys`, into `root`.
export async function chartsView(ctx, root, runs, keys, { xChoices = [], title = "" } = {}) {
  const q = queryParams();
  const opts = {
    x: q.x || "_step",
    smooth: q.smooth || "none",
    weight: q.weight !== undefined ? Number(q.weight) : 0.6,
    window: q.window !== undefined ? Number(q.window) : 10,
    log: q.log === "1",
    filter: q.filter || "",
  };
  const byId = new Map(runs.map((r) => [r.id, r]));
  // plotly.js compiles while the visible panels' data is asked for: a panel waits for it only
  // to draw (Plotly is set before any panel is drawn)
  let Plotly = null;
  const plotlyReady = loadPlotly().then((P) => (Plotly = P));

  const panels = [];
  const visible = new Set();
  const xSel = el(
    "select",
    { name: "x", title: "x axis" },
    el("option", { value: "_step" }, "step"),
    el("option", { value: "_runtime" }, "relative time"),
    el("option", { value: "_timestamp" }, "wall time"),
    xChoices.map((k) => el("option", { value: k }, `metric: ${k}`)),
  );
  xSel.value = opts.x;
  const smoothSel = el(
    "select",
    { name: "smooth", title: "smoothing" },
    el("option", { value: "none" }, "no smoothing"),
    el("option", { value: "ema" }, "EMA (debiased)"),
    el("option", { value: "mean" }, "running average"),
  );
  smoothSel.value = opts.smooth;
  const weight = el("input", { type: "range", name: "weight", min: 0, max: 0.99, step: 0.01, value: opts.weight });
  const windowIn = el("input", { type: "number", name: "window", min: 1, max: 1000, value: opts.window, class: "narrow" });
  const logBox = el("input", { type: "checkbox", name: "log", checked: opts.log });
  const filterIn = el("input", { type: "search", name: "filter", placeholder: "filter panels (regex)", value: opts.filter });
  const legend = el(
    "div",
    { class: "legend" },
    runs.map((r) =>
      el("span", { class: "legend-item" }, el("i", { style: `background:${colorFor(r.id)}` }), r.name || r.id),
    ),
  );
  root.append(
    el(
      "div",
      { class: "toolbar" },
      title ? el("strong", {}, title) : null,
      el("label", {}, "x ", xSel),
      el("label", {}, smoothSel),
      el("label", { class: "ema-only" }, "weight ", weight),
      el("label", { class: "mean-only" }, "window ", windowIn),
      el("label", {}, logBox, " log scale"),
      filterIn,
    ),
    legend,
  );
  const showSmoothControls = () => {
    root.querySelector(".ema-only").style.display = opts.smooth === "ema" ? "" : "none";
    root.querySelector(".mean-only").style.display = opts.smooth === "mean" ? "" : "none";
  };
  showSmoothControls();

  const groups = new Map();
  for (const k of keys) {
    const g = groupOf(k);
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(k);
  }
  const observer = new IntersectionObserver(
    (entries) => {
      for (const e of entries) {
        const p = e.target.__panel;
        if (e.isIntersecting) {
          visible.add(p);
          if (!p.loaded && !p.loading) load(p);
          else if (p.dirty) draw(p);
        } else visible.delete(p);
      }
    },
    { rootMargin: "150px" },
  );
  ctx.onClose(() => {
    observer.disconnect();
    for (const p of panels) if (p.drawn) Plotly.purge(p.plot);
  });

  for (const [g, ks] of [...groups.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const grid = el("div", { class: "panels" });
    root.append(el("details", { open: true, class: "group" }, el("summary", {}, `${g} (${ks.length})`), grid));
    for (const key of ks) {
      const plot = el("div", { class: "plot" });
      const box = el("div", { class: "panel", dataset: { key } }, el("div", { class: "panel-title" }, key), plot);
      const p = { key, box, plot, data: new Map(), upto: new Map(), loaded: false, loading: false, drawn: false };
      box.__panel = p;
      panels.push(p);
      grid.append(box);
      observer.observe(box);
    }
  }
  if (!keys.length) root.append(el("p", { class: "muted" }, "No numeric metrics logged yet."));

  // buckets per run: about one per pixel of the panel's width, fewer when many runs share the
  // panel (about 16,000 points in all: a hundred overlaid lines look the same with 160 points
  // each at this width, and coarse buckets are served from the chunks' statistics, undecoded)
  function samplesFor(p) {
    const width = Math.round(p.plot.clientWidth || 600);
    return Math.max(100, Math.min(1500, width, Math.round(16000 / Math.max(1, runs.length))));
  }

  async function fetchBuckets(p, minStep, maxStep) {
    const res = await api(
      "buckets",
      { runs: runs.map((r) => r.id), key: p.key, samples: samplesFor(p), x: opts.x, min_step: minStep, max_step: maxStep },
      ctx.abort.signal,
    );
    const data = new Map();
    for (const [id, b] of Object.entries(res.runs)) {
      const s = seriesFrom(b, opts.x);
      if (opts.x === "_timestamp") s.x = s.x.map((v) => v * 1000);
      data.set(id, s);
    }
    return data;
  }

  async function load(p, range) {
    p.loading = true;
    p.box.classList.add("loading");
    try {
      const [lo, hi] = range ? stepRange(p, range) : [undefined, undefined];
      p.data = await fetchBuckets(p, lo, hi);
      await plotlyReady;
      if (!ctx.alive) return;
      if (!range) {
        for (const [id, s] of p.data) p.upto.set(id, s.step.length ? s.step[s.step.length - 1] : -1);
        for (const r of runs) if (!p.data.has(r.id)) p.upto.set(r.id, -1);
      }
      p.zoom = range || null;
      p.loaded = true;
      draw(p);
    } catch (e) {
      if (ctx.alive) p.plot.replaceChildren(errorBox(e));
    } finally {
      p.loading = false;
      p.box.classList.remove("loading");
    }
  }

  // The steps that cover an x range of the panel's current points (any x axis).
  function stepRange(p, [a, b]) {
    if (opts.x === "_step") return [Math.floor(a), Math.ceil(b) + 1];
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of p.data.values()) {
      for (let i = 0; i < s.x.length; i++) {
        const before = i > 0 ? s.step[i - 1] : s.step[i];
        if (s.x[i] >= a && s.x[i] <= b) {
          lo = Math.min(lo, before);
          hi = Math.max(hi, s.step[i]);
        } else if (s.x[i] > b) {
          hi = Math.max(hi, s.step[i]);
          break;
        }
      }
    }
    return Number.isFinite(lo) ? [lo, hi + 1] : [undefined, undefined];
  }

  function smooth(ys) {
    if (opts.smooth === "ema" && opts.weight > 0) return ema(ys, opts.weight);
    if (opts.smooth === "mean" && opts.window > 1) return runningAverage(ys, opts.window);
    return ys;
  }

  function traces(p) {
    let points = 0;
    for (const s of p.data.values()) points += s.x.length * (s.exact ? 1 : 3);
    const type = points > WEBGL_POINTS ? "scattergl" : "scatter";
    const bands = p.data.size <= BAND_RUNS;
    const out = [];
    for (const r of runs) {
      const s = p.data.get(r.id);
      if (!s || !s.x.length) continue;
      const c = colorFor(r.id);
      const name = r.name || r.id;
      const smoothing = opts.smooth !== "none";
      if (!s.exact && bands) {
        out.push({ type, x: s.x, y: s.min, mode: "lines", line: { width: 0, color: c }, hoverinfo: "skip", showlegend: false, legendgroup: r.id });
        out.push({
          type, x: s.x, y: s.max, mode: "lines", line: { width: 0, color: c }, fill: "tonexty",
          fillcolor: withAlpha(c, smoothing ? 0.08 : 0.18), hoverinfo: "skip", showlegend: false, legendgroup: r.id,
        });
      }
      if (smoothing) {
        out.push({ type, x: s.x, y: s.last, mode: "lines", line: { width: 1, color: withAlpha(c, 0.3) }, hoverinfo: "skip", showlegend: false });
      }
      out.push({
        type, x: s.x, y: smoothing ? smooth(s.last) : s.last, mode: s.x.length === 1 ? "markers" : "lines",
        line: { width: 1.5, color: c }, marker: { color: c }, name, legendgroup: r.id, meta: r.id,
        hovertemplate: `${name.replace(/[<>]/g, "")}: %{y:.5g}<extra></extra>`,
      });
    }
    return out;
  }

  function layout(p) {
    const xTitle = { _step: "step", _runtime: "relative time (s)", _timestamp: "wall time (UTC)" }[opts.x] || opts.x;
    const lay = {
      margin: { l: 50, r: 10, t: 6, b: 36 },
      height: 250,
      showlegend: false,
      hovermode: "x unified",
      xaxis: { title: { text: xTitle, font: { size: 11 } }, type: opts.x === "_timestamp" ? "date" : "linear", automargin: true },
      yaxis: { type: opts.log ? "log" : "linear", automargin: true },
      font: { size: 11 },
      uirevision: `${opts.x}|${opts.log}`,
    };
    if (p.zoom) {
      lay.xaxis.range = opts.x === "_timestamp" ? p.zoom.map((v) => new Date(v).toISOString()) : p.zoom;
      lay.xaxis.autorange = false;
    }
    return lay;
  }

  function draw(p) {
    p.dirty = false;
    const data = traces(p);
    if (!data.length) {
      if (p.drawn) Plotly.purge(p.plot);
      p.drawn = false;
      p.plot.replaceChildren(el("p", { class: "muted" }, "no numeric values"));
      return;
    }
    if (!p.drawn) p.plot.replaceChildren();
    Plotly.react(p.plot, data, layout(p), { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
    if (!p.drawn) {
      p.drawn = true;
      p.plot.on("plotly_relayout", (ev) => onRelayout(p, ev));
    }
    p.box.dataset.points = String(data.reduce((n, t) => n + (t.meta ? t.x.length : 0), 0));
    p.box.dataset.drawnAt = String(performance.now());
  }

  function onRelayout(p, ev) {
    if (ev["xaxis.autorange"] || ev.autosize) {
      if (p.zoom) load(p, null);
      return;
    }
    let a = ev["xaxis.range[0]"];
    let b = ev["xaxis.range[1]"];
    if (a === undefined && Array.isArray(ev["xaxis.range"])) [a, b] = ev["xaxis.range"];
    if (a === undefined) return;
    if (opts.x === "_timestamp") {
      a = Date.parse(String(a).replace(" ", "T") + "Z");
      b = Date.parse(String(b).replace(" ", "T") + "Z");
    }
    const range = [Number(a), Number(b)];
    load(p, range).then(() => p.box.dataset.zoomedAt = String(performance.now()));
  }

  const redrawAll = () => {
    for (const p of panels) if (p.loaded) (visible.has(p) ? draw(p) : (p.dirty = true));
  };
  const reloadAll = () => {
    for (const p of panels) {
      p.loaded = false;
      p.zoom = null;
      p.upto.clear();
      if (visible.has(p)) load(p);
    }
  };
  xSel.onchange = () => {
    opts.x = xSel.value;
    replaceQuery({ x: opts.x === "_step" ? "" : opts.x });
    reloadAll();
  };
  smoothSel.onchange = () => {
    opts.smooth = smoothSel.value;
    replaceQuery({ smooth: opts.smooth === "none" ? "" : opts.smooth });
    showSmoothControls();
    redrawAll();
  };
  weight.oninput = () => {
    opts.weight = Number(weight.value);
    replaceQuery({ weight: opts.weight });
    redrawAll();
  };
  windowIn.onchange = () => {
    opts.window = Math.max(1, Number(windowIn.value) || 1);
    replaceQuery({ window: opts.window });
    redrawAll();
  };
  logBox.onchange = () => {
    opts.log = logBox.checked;
    replaceQuery({ log: opts.log ? "1" : "" });
    redrawAll();
  };
  const applyFilter = () => {
    let re = null;
    try {
      re = opts.filter ? new RegExp(opts.filter, "i") : null;
      filterIn.classList.remove("bad");
    } catch {
      filterIn.classList.add("bad");
    }
    for (const p of panels) p.box.style.display = !re || re.test(p.key) ? "" : "none";
  };
  filterIn.oninput = () => {
    opts.filter = filterIn.value;
    replaceQuery({ filter: opts.filter });
    applyFilter();
  };
  applyFilter();

  // live: the rows each running run stored after the panels' cursor, appended to the panels
  async function poll() {
    for (const r of runs) {
      if (r.state !== "running") continue;
      const loaded = panels.filter((p) => p.loaded && !p.loading && p.upto.has(r.id));
      if (!loaded.length) continue;
      const since = Math.min(...loaded.map((p) => p.upto.get(r.id)));
      const wanted = loaded.map((p) => p.key);
      const xKey = opts.x.startsWith("_") ? null : opts.x;
      if (xKey && !wanted.includes(xKey)) wanted.push(xKey);
      const t = await api(`runs/${encodeURIComponent(r.id)}/tail`, { keys: wanted, since }, ctx.abort.signal);
      if (!ctx.alive) return;
      const rows = t.rows;
      for (const p of loaded) {
        const upto = p.upto.get(r.id);
        let s = p.data.get(r.id);
        const col = rows[p.key];
        let added = 0;
        for (let i = 0; i < rows._step.length; i++) {
          const step = rows._step[i];
          const v = col[i];
          if (step <= upto || v === null || v === undefined) continue;
          let x = step;
          if (opts.x === "_runtime") x = rows._timestamp[i] - r.created_at;
          else if (opts.x === "_timestamp") x = rows._timestamp[i] * 1000;
          else if (xKey) x = rows[xKey][i];
          if (x === null || x === undefined) continue;
          if (!s) {
            s = seriesFrom({ x: [], last: [], exact: true }, opts.x);
            p.data.set(r.id, s);
          }
          appendPoint(s, x, step, v, samplesFor(p));
          added++;
        }
        p.upto.set(r.id, Math.max(upto, t.cursor));
        if (added) visible.has(p) ? draw(p) : (p.dirty = true);
      }
      if (t.state !== "running") r.state = t.state;
    }
  }
  if (runs.some((r) => r.state === "running")) ctx.every(POLL_MS, poll);
  return { panels, byId };
}

// System metrics of one run: a panel per metric (per-device metrics of CPUs, GPUs and
// processes share one, a trace per device), per host, against wall time.
export async function systemView(ctx, root, run) {
  const Plotly = await loadPlotly();
  const res = await api(`runs/${encodeURIComponent(run.id)}/system`, {}, ctx.abort.signal);
  if (!ctx.alive) return;
  const hosts = res.hosts;
  let cursor = res.cursor;
  const families = new Map(); // panel name -> [{host, key, label}]
  const addKeys = (host, keys) => {
    for (const key of keys) {
      if (key.endsWith("_max")) continue;
      const m = key.match(/^system\/(cpu|gpu|proc)\/([^/]+)\/(.+)$/);
      const name = m ? `system/${m[1]}/*/${m[3]}` : key;
      const label = (Object.keys(hosts).length > 1 ? host + " " : "") + (m ? `${m[1]} ${m[2]}` : key.slice(7));
      if (!families.has(name)) families.set(name, []);
      const fam = families.get(name);
      if (!fam.some((t) => t.host === host && t.key === key)) fam.push({ host, key, label });
    }
  };
  for (const [h, d] of Object.entries(hosts)) addKeys(h, Object.keys(d.keys));
  if (!families.size) {
    root.append(el("p", { class: "muted" }, "No system metrics for this run."));
    return;
  }
  const order = (n) => (n.includes("/gpu/") ? 0 : n.includes("cpu") ? 1 : n.includes("memory") ? 2 : 3);
  const names = [...families.keys()].sort((a, b) => order(a) - order(b) || a.localeCompare(b));
  const grid = el("div", { class: "panels" });
  root.append(grid);
  const plots = new Map();
  const draw = (name) => {
    const data = families.get(name).map((t, i) => ({
      type: "scatter",
      mode: hosts[t.host].t.length < 60 ? "lines+markers" : "lines",
      name: t.label,
      x: hosts[t.host].t.map((v) => v * 1000),
      y: hosts[t.host].keys[t.key],
      line: { width: 1.5, color: colorFor(t.label + i) },
    }));
    Plotly.react(plots.get(name), data, {
      margin: { l: 50, r: 10, t: 6, b: 30 }, height: 230, hovermode: "x unified", showlegend: data.length > 1 && data.length <= 8,
      legend: { orientation: "h", y: -0.25 }, xaxis: { type: "date" }, yaxis: { tickformat: "~s" }, font: { size: 11 },
    }, { displaylogo: false, responsive: true });
  };
  for (const name of names) {
    const plot = el("div", { class: "plot" });
    plots.set(name, plot);
    grid.append(el("div", { class: "panel", dataset: { key: name } }, el("div", { class: "panel-title" }, name), plot));
    draw(name);
  }
  ctx.onClose(() => plots.forEach((p) => Plotly.purge(p)));
  if (run.state === "running") {
    ctx.every(5000, async () => {
      const more = await api(`runs/${encodeURIComponent(run.id)}/system`, { since: cursor }, ctx.abort.signal);
      if (!ctx.alive || more.cursor === null || more.cursor === cursor) return;
      cursor = more.cursor;
      for (const [h, d] of Object.entries(more.hosts)) {
        const have = hosts[h] || (hosts[h] = { t: [], keys: {} });
        const n = have.t.length;
        have.t.push(...d.t);
        for (const [k, col] of Object.entries(d.keys)) {
          if (!have.keys[k]) have.keys[k] = new Array(n).fill(null);
          have.keys[k].push(...col);
        }
        for (const col of Object.values(have.keys)) while (col.length < have.t.length) col.push(null);
        addKeys(h, Object.keys(d.keys));
      }
      for (const name of names) draw(name);
    });
  }
}
