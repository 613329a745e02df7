// Shared helpers of the page: the JSON API, building DOM, formatting, run colours, plotly.

export class ApiError extends Error {}

// GET /api/<path> with the query `params` (undefined and null left out); the parsed JSON.
export async function api(path, params = {}, signal) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const url = `/api/${path}${q.toString() ? "?" + q : ""}`;
  const res = await fetch(url, { signal, credentials: "same-origin" });
  let body;
  try {
    body = await res.json();
  } catch {
    throw new ApiError(`${url}: ${res.status} ${res.statusText}`);
  }
  if (!res.ok) throw new ApiError(body.error || `${url}: ${res.status}`);
  return body;
}

// el("div", {class: "x", onclick: fn}, child, "text", ...): an element.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Replace a node's children (arrays flattened, empty values left out).
export function setChildren(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== undefined && c !== null && c !== false));
}

export function link(href, ...children) {
  return el("a", { href }, ...children);
}

export function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

export function fmtValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(4) : String(Number(v.toPrecision(6)));
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function stateBadge(state) {
  const shown = state === "running" ? "live" : state;
  return el("span", { class: `state state-${state}` }, shown);
}

// A colour per run id, the same on every page and in every panel: a hue from the id's hash
// (360 hues: two runs of one chart rarely share one, as they would in a palette of 20).
export function colorFor(id) {
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  const hue = h % 360;
  const light = 0.38 + ((h >>> 9) % 3) * 0.07; // three lightnesses tell close hues apart
  const a = 0.7 * Math.min(light, 1 - light);
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    const c = light - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(255 * c).toString(16).padStart(2, "0");
  };
  return `#${f(0)}${f(8)}${f(4)}`;
}

export function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

// plotly.js, from the installed plotly package, loaded once and only by pages that draw.
let plotlyLoading = null;
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const src = document.querySelector('meta[name="plotly"]').content;
      const s = el("script", { src });
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => reject(new Error(`cannot load ${src}`));
      document.head.append(s);
    });
  }
  return plotlyLoading;
}

// What a page holds while shown: timers, observers, plots; all released when the page goes.
export class PageContext {
  constructor() {
    this.alive = true;
    this.cleanups = [];
    this.abort = new AbortController();
  }
  every(ms, fn) {
    let running = false;
    const id = setInterval(async () => {
      if (running || !this.alive || document.hidden) return;
      running = true;
      try {
        await fn();
      } catch (e) {
        if (this.alive) console.warn(e);
      } finally {
        running = false;
      }
    }, ms);
    this.cleanups.push(() => clearInterval(id));
  }
  onClose(fn) {
    this.cleanups.push(fn);
  }
  close() {
    this.alive = false;
    this.abort.abort();
    for (const fn of this.cleanups.splice(0)) {
      try {
        fn();
      } catch (e) {
        console.warn(e);
      }
    }
  }
}

export function errorBox(e) {
  return el("div", { class: "error" }, e instanceof Error ? e.message : String(e));
}

// The query string of the current URL as an object, and a way to change it in place.
export function queryParams() {
  return Object.fromEntries(new URLSearchParams(location.search));
}

export function replaceQuery(changes) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(changes)) {
    if (v === undefined || v === null || v === "" || v === false || (Array.isArray(v) && !v.length)) q.delete(k);
    else q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const s = q.toString();
  history.replaceState(history.state, "", location.pathname + (s ? "?" + s : ""));
}
