// Tables a run logged: rows with images in cells, filter / group / sort by the table query
// (`trackside table --where` language), pages; INCREMENTAL increments, MUTABLE versions.

import { api, el, errorBox, fmtValue, queryParams, replaceQuery, setChildren } from "./util.js";

const enc = encodeURIComponent;

function cell(v) {
  if (v === null || v === undefined) return el("td", { class: "muted" }, "");
  if (typeof v !== "object") return el("td", { class: typeof v === "number" ? "num" : "" }, fmtValue(v));
  switch (v.kind) {
    case "image":
      return el("td", {}, el("img", { src: v.url, loading: "lazy", class: "thumb", title: v.caption || "" }));
    case "audio":
      return el("td", {}, el("audio", { controls: true, src: v.url, preload: "none" }));
    case "video":
      return el("td", {}, el("video", { controls: true, src: v.url, preload: "none", class: "thumb" }));
    case "value":
    case "array":
      return el("td", { class: "mono" }, fmtValue(v.value));
    default:
      return el("td", {}, v.url ? el("a", { href: v.url }, v.kind) : fmtValue(v));
  }
}

export async function tablesView(ctx, root, run) {
  if (!run.tables.length) {
    root.append(el("p", { class: "muted" }, "This run logged no tables."));
    return;
  }
  const q = queryParams();
  const state = {
    key: run.tables.includes(q.key) ? q.key : run.tables[0],
    version: q.version || "",
    increment: q.increment ?? "",
    where: q.where || "",
    group: q.group || "",
    sort: q.sort || "",
    desc: q.desc === "1",
    page: Number(q.page || 0),
  };
  const keySel = el("select", { name: "key" }, run.tables.map((k) => el("option", { value: k }, k)));
  keySel.value = state.key;
  const versionSel = el("select", { name: "version" });
  const incSel = el("select", { name: "increment" });
  const where = el("input", { type: "search", name: "where", class: "wide", value: state.where, placeholder: "where: score > 0.5 and label == cat" });
  const groupSel = el("select", { name: "group" });
  const info = el("span", { class: "muted" });
  const errors = el("div");
  const table = el("table", { class: "grid", id: "table" });
  const pager = el("div", { class: "pager" });
  root.append(
    el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); state.where = where.value; state.page = 0; load(); } },
      keySel, el("label", { class: "versions" }, "version ", versionSel), el("label", { class: "increments" }, "increment ", incSel),
      where, el("button", { type: "submit" }, "Filter"), el("label", {}, "group by ", groupSel), info),
    errors, table, pager,
  );
  keySel.onchange = () => { Object.assign(state, { key: keySel.value, version: "", increment: "", where: "", group: "", sort: "", page: 0 }); where.value = ""; load(); };
  versionSel.onchange = () => { state.version = versionSel.value; state.increment = ""; state.page = 0; load(); };
  incSel.onchange = () => { state.increment = incSel.value; state.page = 0; load(); };
  groupSel.onchange = () => { state.group = groupSel.value; state.sort = ""; state.page = 0; load(); };
  let latest = null;

  async function load() {
    replaceQuery({ ...state, desc: state.desc ? "1" : "", page: state.page || "" });
    errors.replaceChildren();
    let res;
    try {
      res = await api(`runs/${enc(run.id)}/table`, {
        key: state.key, version: state.version, increment: state.increment, where: state.where, group: state.group,
        sort: state.sort, desc: state.desc ? "1" : "", page: state.page, per_page: 25,
      }, ctx.abort.signal);
    } catch (e) {
      if (ctx.alive) errors.append(errorBox(e));
      return;
    }
    if (!ctx.alive) return;
    latest = res.versions.length ? res.versions[res.versions.length - 1].version : null;
    const incremental = res.versions.some((v) => v.increment !== null);
    setChildren(versionSel, 
      el("option", { value: "" }, `latest (${latest})`),
      res.versions.slice().reverse().map((v) => el("option", { value: v.version }, `${v.version}${v.step !== null ? ` · step ${v.step}` : ""}`)),
    );
    versionSel.value = state.version;
    root.querySelector(".increments").style.display = incremental ? "" : "none";
    setChildren(incSel, 
      el("option", { value: "" }, "all, joined"),
      res.versions.filter((v) => v.increment !== null).map((v) => el("option", { value: v.increment }, `#${v.increment}${v.step !== null ? ` · step ${v.step}` : ""}`)),
    );
    incSel.value = String(state.increment);
    if (!state.group) {
      setChildren(groupSel, el("option", { value: "" }, "(none)"), res.columns.map((c) => el("option", { value: c }, c)));
    }
    groupSel.value = state.group;
    info.textContent = `${res.total} row${res.total === 1 ? "" : "s"} · ${res.log_mode || ""}`;
    const head = el("tr", {}, res.columns.map((c) => {
      const active = state.sort === c;
      return el("th", { class: "sortable", onclick: () => {
        state.desc = active ? !state.desc : false;
        state.sort = c;
        load();
      } }, c, active ? (state.desc ? " ▾" : " ▴") : "");
    }));
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, res.rows.map((r) => el("tr", { dataset: { row: r.row ?? "" } }, r.cells.map(cell)))));
    const pages = Math.max(1, Math.ceil(res.total / res.per_page));
    pager.replaceChildren(
      el("button", { disabled: state.page <= 0, onclick: () => { state.page--; load(); } }, "‹ prev"),
      el("span", {}, ` page ${state.page + 1} of ${pages} `),
      el("button", { disabled: state.page >= pages - 1, onclick: () => { state.page++; load(); } }, "next ›"),
    );
    table.dataset.version = res.version;
  }
  await load();
  if (run.state === "running") {
    // live: the list of versions only; the page is read again when a new version is the one shown
    ctx.every(3000, async () => {
      const { tables } = await api(`runs/${enc(run.id)}/tables`, {}, ctx.abort.signal);
      const versions = tables[state.key] || [];
      const newest = versions.length ? versions[versions.length - 1].version : null;
      if (ctx.alive && newest !== latest && !state.version && state.increment === "") await load();
    });
  }
}
