// The page: a router over URLs that can be shared, and the projects, runs table and run pages.

import { chartsView, systemView } from "./charts.js";
import { histogramsView, mediaView } from "./media.js";
import { tablesView } from "./tables.js";
import {
  PageContext, api, setChildren, colorFor, loadPlotly, el, errorBox, fmtBytes, fmtDuration, fmtTime, fmtValue, link, queryParams,
  replaceQuery, stateBadge,
} from "./util.js";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
let current = null;

const enc = encodeURIComponent;

function setCrumbs(...parts) {
  crumbs.replaceChildren(...parts.flatMap((p, i) => (i ? [el("span", { class: "sep" }, "/"), p] : [p])));
}

const routes = [
  [/^\/$/, projectsPage],
  [/^\/projects\/([^/]+)\/?$/, runsPage],
  [/^\/projects\/([^/]+)\/compare\/?$/, comparePage],
  [/^\/runs\/([^/]+)\/?$/, (ctx, id) => runPage(ctx, id, "overview")],
  [/^\/runs\/([^/]+)\/(charts|system|media|histograms|tables|console|artifacts)\/?$/, runPage],
];

async function render() {
  if (current) current.close();
  const ctx = (current = new PageContext());
  main.replaceChildren();
  document.body.dataset.ready = "";
  const path = location.pathname;
  // the pages that draw fetch and compile plotly.js while their data is asked for
  if (/\/(charts|system|media|histograms|compare)\/?$/.test(path)) loadPlotly().catch(() => {});
  for (const [re, fn] of routes) {
    const m = path.match(re);
    if (m) {
      try {
        await fn(ctx, ...m.slice(1).map(decodeURIComponent));
      } catch (e) {
        if (ctx.alive && e.name !== "AbortError") main.append(errorBox(e));
      }
      if (ctx.alive) document.body.dataset.ready = path;
      return;
    }
  }
  main.append(errorBox(`no page at ${path}`));
}

export function go(href) {
  history.pushState(null, "", href);
  render();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a");
  if (!a || a.target || a.hasAttribute("download") || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname.startsWith("/static/")) return;
  e.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", render);

// -- projects -------------------------------------------------------------------------------------

async function projectsPage(ctx) {
  setCrumbs(el("span", {}, "projects"));
  const { projects } = await api("projects", {}, ctx.abort.signal);
  if (!projects.length) {
    main.append(el("p", { class: "muted" }, "No runs yet: log one with trackside.init() and run.log()."));
    return;
  }
  main.append(
    el("h1", {}, "Projects"),
    el(
      "table",
      { class: "grid", id: "projects" },
      el("thead", {}, el("tr", {}, el("th", {}, "project"), el("th", {}, "runs"), el("th", {}, "live"), el("th", {}, "last run"))),
      el(
        "tbody",
        {},
        projects.map((p) =>
          el(
            "tr",
            {},
            el("td", {}, link(`/projects/${enc(p.name)}`, p.name)),
            el("td", { class: "num" }, p.runs),
            el("td", { class: "num" }, p.running || ""),
            el("td", {}, fmtTime(p.last_created)),
          ),
        ),
      ),
    ),
  );
}

// -- the runs table -------------------------------------------------------------------------------

const BASE_COLUMNS = [
  ["name", "name"],
  ["state", "state"],
  ["created_at", "created"],
  ["duration", "duration"],
  ["tags", "tags"],
  ["group", "group"],
];

async function runsPage(ctx, project) {
  setCrumbs(link("/", "projects"), el("span", {}, project));
  const q = queryParams();
  const state = {
    q: q.q || "",
    order: q.order || "-created_at",
    page: Number(q.page || 0),
    columns: q.columns ? q.columns.split(",") : [],
    group: q.group || "",
  };
  const selected = new Set(q.selected ? q.selected.split(",") : []);
  const filter = el("input", {
    type: "search", name: "q", value: state.q, class: "wide",
    placeholder: "filter: config.lr > 0.01 and state == running, tags contains best, name startswith bert",
  });
  const groupSel = el("select", { name: "group" });
  const addCol = el("select", { name: "add-column" });
  const compare = el("button", { name: "compare", disabled: !selected.size }, "Compare selected");
  const count = el("span", { class: "muted" });
  const errors = el("div");
  const table = el("table", { class: "grid", id: "runs" });
  const pager = el("div", { class: "pager" });
  main.append(
    el("h1", {}, project),
    el(
      "form",
      { class: "toolbar", onsubmit: (e) => { e.preventDefault(); state.q = filter.value; state.page = 0; load(); } },
      filter,
      el("button", { type: "submit" }, "Filter"),
      el("label", {}, "group by ", groupSel),
      el("label", {}, "add column ", addCol),
      compare,
      count,
    ),
    errors,
    table,
    pager,
  );
  compare.onclick = (e) => {
    e.preventDefault();
    go(`/projects/${enc(project)}/compare?runs=${[...selected].map(enc).join(",")}`);
  };
  groupSel.onchange = () => { state.group = groupSel.value; state.page = 0; load(); };
  addCol.onchange = () => {
    if (addCol.value && !state.columns.includes(addCol.value)) state.columns.push(addCol.value);
    load();
  };

  const sortHeader = (field, label) => {
    const active = state.order.replace(/^-/, "") === field;
    const desc = state.order.startsWith("-");
    return el(
      "th",
      { class: "sortable", dataset: { field }, onclick: () => {
        state.order = active && !desc ? `-${field}` : field;
        state.page = 0;
        load();
      } },
      label,
      active ? (desc ? " ▾" : " ▴") : "",
    );
  };

  async function load() {
    replaceQuery({
      q: state.q, order: state.order === "-created_at" ? "" : state.order, page: state.page || "",
      columns: state.columns, group: state.group, selected: [...selected],
    });
    errors.replaceChildren();
    let res;
    try {
      res = await api("runs", {
        project, q: state.q, order: state.order, page: state.page, per_page: 50, columns: state.columns, group: state.group,
      }, ctx.abort.signal);
    } catch (e) {
      if (ctx.alive) errors.append(errorBox(e));
      return;
    }
    if (!ctx.alive) return;
    const choices = [...new Set([...res.available, ...state.columns])];
    setChildren(groupSel, el("option", { value: "" }, "(none)"),
      ["state", "group", "job_type", ...choices.filter((c) => c.startsWith("config."))].map((c) => el("option", { value: c }, c)));
    groupSel.value = state.group;
    setChildren(addCol, el("option", { value: "" }, "…"), choices.filter((c) => !state.columns.includes(c)).map((c) => el("option", { value: c }, c)));
    count.textContent = `${res.total} run${res.total === 1 ? "" : "s"}`;
    const all = el("input", { type: "checkbox", title: "select the runs of this page" });
    all.onchange = () => {
      for (const r of res.runs) all.checked ? selected.add(r.id) : selected.delete(r.id);
      load();
    };
    const head = el(
      "tr",
      {},
      el("th", {}, all),
      BASE_COLUMNS.map(([f, label]) => sortHeader(f, label)),
      state.columns.map((c) => {
        const th = sortHeader(c, c);
        th.append(el("button", { class: "x", title: "remove column", onclick: (e) => {
          e.stopPropagation();
          state.columns = state.columns.filter((x) => x !== c);
          load();
        } }, "×"));
        return th;
      }),
    );
    const body = el("tbody");
    let lastGroup;
    for (const r of res.runs) {
      if (state.group && (lastGroup === undefined || JSON.stringify(r.group_value) !== lastGroup)) {
        lastGroup = JSON.stringify(r.group_value);
        body.append(el("tr", { class: "group-row" }, el("td", { colspan: 7 + state.columns.length }, `${state.group} = ${fmtValue(r.group_value) || "(none)"}`)));
      }
      const box = el("input", { type: "checkbox", checked: selected.has(r.id), dataset: { run: r.id } });
      box.onchange = () => {
        box.checked ? selected.add(r.id) : selected.delete(r.id);
        compare.disabled = !selected.size;
        replaceQuery({ selected: [...selected] });
      };
      body.append(
        el(
          "tr",
          { dataset: { run: r.id } },
          el("td", {}, box),
          el("td", {}, el("i", { class: "swatch", style: `background:${colorFor(r.id)}` }), link(`/runs/${enc(r.id)}`, r.name || r.id)),
          el("td", {}, stateBadge(r.state)),
          el("td", {}, fmtTime(r.created_at)),
          el("td", { class: "num" }, fmtDuration(r.duration)),
          el("td", {}, r.tags.map((t) => el("span", { class: "tag" }, t))),
          el("td", {}, r.group || ""),
          state.columns.map((c) => el("td", { class: typeof r.values[c] === "number" ? "num" : "" }, fmtValue(r.values[c]))),
        ),
      );
    }
    table.replaceChildren(el("thead", {}, head), body);
    compare.disabled = !selected.size;
    const pages = Math.max(1, Math.ceil(res.total / res.per_page));
    pager.replaceChildren(
      el("button", { disabled: state.page <= 0, onclick: () => { state.page--; load(); } }, "‹ prev"),
      el("span", {}, ` page ${state.page + 1} of ${pages} `),
      el("button", { disabled: state.page >= pages - 1, onclick: () => { state.page++; load(); } }, "next ›"),
    );
    document.body.dataset.runsLoaded = String(performance.now());
  }
  await load();
}

// -- charts of several runs -------------------------------------------------------------------------

async function comparePage(ctx, project) {
  const ids = (queryParams().runs || "").split(",").filter(Boolean);
  setCrumbs(link("/", "projects"), link(`/projects/${enc(project)}`, project), el("span", {}, `compare ${ids.length} runs`));
  if (!ids.length) {
    main.append(el("p", { class: "muted" }, "Select runs in the runs table to compare them."));
    return;
  }
  const res = await api("compare", { runs: ids }, ctx.abort.signal);
  if (!ctx.alive) return;
  const root = el("div");
  main.append(root);
  await chartsView(ctx, root, res.runs, res.scalars, { xChoices: res.scalars });
}

// -- one run --------------------------------------------------------------------------------------

const TABS = ["overview", "charts", "system", "media", "histograms", "tables", "console", "artifacts"];

async function runPage(ctx, id, tab) {
  const run = await api(`runs/${enc(id)}`, {}, ctx.abort.signal);
  if (!ctx.alive) return;
  setCrumbs(link("/", "projects"), link(`/projects/${enc(run.project)}`, run.project), el("span", {}, run.name || run.id));
  main.append(
    el("h1", {}, el("i", { class: "swatch", style: `background:${colorFor(run.id)}` }), run.name || run.id, " ", stateBadge(run.state)),
    el("nav", { class: "tabs" }, TABS.map((t) => el("a", { href: `/runs/${enc(run.id)}${t === "overview" ? "" : "/" + t}`, class: t === tab ? "active" : "" }, t))),
  );
  const root = el("div", { class: `tab-${tab}` });
  main.append(root);
  if (tab === "overview") overview(root, run);
  else if (tab === "charts") await chartsView(ctx, root, [run], run.scalars, { xChoices: run.scalars });
  else if (tab === "system") await systemView(ctx, root, run);
  else if (tab === "media") await mediaView(ctx, root, run);
  else if (tab === "histograms") await histogramsView(ctx, root, run);
  else if (tab === "tables") await tablesView(ctx, root, run);
  else if (tab === "console") await consoleView(ctx, root, run);
  else if (tab === "artifacts") await artifactsView(ctx, root, run);
}

function kvTable(obj, id) {
  const rows = Object.entries(obj);
  if (!rows.length) return el("p", { class: "muted" }, "none");
  return el("table", { class: "kv", id }, el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, fmtValue(v))))));
}

function flat(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v) && !("_type" in v)) flat(v, `${prefix}${k}.`, out);
    else out[prefix + k] = v;
  }
  return out;
}

function overview(root, run) {
  const m = run.metadata || {};
  const git = m.git || {};
  const fields = {
    id: run.id, project: run.project, name: run.name, state: run.state, group: run.group, "job type": run.job_type,
    tags: (run.tags || []).join(", "), created: fmtTime(run.created_at), duration: fmtDuration(run.duration),
    "exit code": run.exit_code, "last step": run.last_step, rows: run.history_rows,
    command: Array.isArray(m.args) ? [m.program || "", ...m.args].join(" ") : m.command || m.program,
    host: m.host, python: m.python, "git commit": git.commit, "git remote": git.remote,
  };
  const shown = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  const diff = git.diff || m.diff;
  const rest = Object.fromEntries(Object.entries(flat(m)).filter(([k]) => !k.startsWith("git.diff") && k !== "diff"));
  root.append(
    el("div", { class: "cols" },
      el("section", {}, el("h2", {}, "Run"), kvTable(shown, "fields")),
      el("section", {}, el("h2", {}, "Config"), kvTable(flat(run.config), "config")),
      el("section", {}, el("h2", {}, "Summary"), kvTable(run.summary, "summary")),
    ),
    diff ? el("details", {}, el("summary", {}, "uncommitted changes (git diff)"), el("pre", { class: "diff" }, diff)) : null,
    el("details", {}, el("summary", {}, "all metadata"), kvTable(rest, "metadata")),
  );
}

async function consoleView(ctx, root, run) {
  const q = queryParams();
  const search = el("input", { type: "search", name: "q", placeholder: "search the output", value: q.q || "" });
  const streamSel = el("select", { name: "stream" }, el("option", { value: "" }, "stdout and stderr"), el("option", { value: "stdout" }, "stdout"), el("option", { value: "stderr" }, "stderr"));
  streamSel.value = q.stream || "";
  const info = el("span", { class: "muted" });
  const out = el("pre", { class: "console", id: "console" });
  const pager = el("div", { class: "pager" });
  let page = q.page !== undefined ? Number(q.page) : undefined;
  let cursor = 0;
  let atEnd = false;
  root.append(el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); page = undefined; load(); } }, search, streamSel, el("button", { type: "submit" }, "Search"), info), out, pager);
  streamSel.onchange = () => { page = undefined; load(); };
  const line = ([i, t, s, text]) => el("div", { class: `line ${s}` }, el("span", { class: "ln" }, i + 1), text);
  async function load() {
    replaceQuery({ q: search.value, stream: streamSel.value, page });
    const res = await api(`runs/${enc(run.id)}/console`, { q: search.value, stream: streamSel.value, page }, ctx.abort.signal);
    if (!ctx.alive) return;
    out.replaceChildren(...res.lines.map(line));
    cursor = res.cursor;
    atEnd = res.page === res.pages - 1 && !search.value;
    info.textContent = search.value ? `${res.total} of ${res.all} lines match` : `${res.all} lines`;
    pager.replaceChildren(
      el("button", { disabled: res.page <= 0, onclick: () => { page = 0; load(); } }, "« first"),
      el("button", { disabled: res.page <= 0, onclick: () => { page = res.page - 1; load(); } }, "‹ prev"),
      el("span", {}, ` page ${res.page + 1} of ${res.pages} `),
      el("button", { disabled: res.page >= res.pages - 1, onclick: () => { page = res.page + 1; load(); } }, "next ›"),
      el("button", { disabled: res.page >= res.pages - 1, onclick: () => { page = undefined; load(); } }, "last »"),
    );
  }
  await load();
  if (run.state === "running") {
    ctx.every(2000, async () => {
      if (!atEnd) return;
      const res = await api(`runs/${enc(run.id)}/console`, { stream: streamSel.value, since: cursor }, ctx.abort.signal);
      if (!ctx.alive) return;
      res.lines.forEach(([t, s, text], k) => out.append(line([cursor + k, t, s, text])));
      cursor = res.cursor;
    });
  }
}

async function artifactsView(ctx, root, run) {
  const { artifacts } = await api(`runs/${enc(run.id)}/artifacts`, {}, ctx.abort.signal);
  if (!ctx.alive) return;
  if (!artifacts.length) {
    root.append(el("p", { class: "muted" }, "This run logged no artifacts."));
    return;
  }
  const byName = new Map();
  for (const a of artifacts) {
    if (!byName.has(a.name)) byName.set(a.name, []);
    byName.get(a.name).push(a);
  }
  for (const [name, versions] of byName) {
    root.append(
      el("section", { class: "artifact", dataset: { name } },
        el("h2", {}, name, " ", el("span", { class: "muted" }, versions[0].type)),
        versions.map((a) =>
          el("details", { open: a === versions[versions.length - 1] },
            el("summary", {}, `${a.version}`, a.aliases.map((x) => el("span", { class: "tag" }, x)), a.step !== null ? el("span", { class: "muted" }, ` step ${a.step}`) : null),
            a.description ? el("p", {}, a.description) : null,
            el("table", { class: "grid" }, el("tbody", {}, a.entries.map((e) =>
              el("tr", {},
                el("td", {}, e.kind === "file"
                  ? el("a", { href: `/api/artifacts/file?name=${enc(`${a.name}:${a.version}`)}&entry=${enc(e.name)}`, download: e.name.split("/").pop() }, e.name)
                  : e.name),
                el("td", {}, e.kind === "file" ? "file" : e.type || "object"),
                el("td", { class: "num" }, fmtBytes(e.size)),
                el("td", { class: "mono muted" }, e.sha256 ? e.sha256.slice(0, 12) : ""),
              )))),
            Object.keys(a.metadata || {}).length ? kvTable(flat(a.metadata)) : null,
          ),
        ),
      ),
    );
  }
}

render();
