// AAR dashboard: renders each page from /api/... and keeps it live from /api/stream
// (Server-Sent Events pushed from NATS; nothing polls). Every text from the log is
// inserted as text (agents write it); only Pygments' highlighted code is HTML.
"use strict";

const body = document.body;
const PAGE = body.dataset.page;
const SID = body.dataset.session;
const REFERENCE = body.dataset.referencePgr === "" ? null
  : { pgr: Number(body.dataset.referencePgr), label: body.dataset.referenceLabel || "reference" };
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d",
  "#9333ea", "#ea580c"];
const app = document.getElementById("app");
const detail = document.getElementById("detail");

// -- helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function num(x, d = 3) { return x === null || x === undefined ? "" : Number(x).toFixed(d); }
function pm(x, se, d = 3) { return x === null || x === undefined ? "" : num(x, d) + (se === null || se === undefined ? "" : " ± " + num(se, d)); }
function when(t) { return t ? String(t).replace("T", " ").slice(0, 19) : ""; }
function secs(s) {
  if (s === null || s === undefined) return "";
  s = Number(s);
  return s < 120 ? s.toFixed(1) + " s" : s < 7200 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(2) + " h";
}
function usd(x) { return "$" + Number(x || 0).toFixed(4); }
function color(agents, agent) { const i = agents.indexOf(agent); return COLORS[(i < 0 ? agents.length : i) % COLORS.length]; }

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) {
    let why = r.statusText;
    try { why = (await r.json()).detail || why; } catch (e) { /* not JSON */ }
    throw new Error(`${r.status}: ${why}`);
  }
  return r.json();
}

function api(kind, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return getJSON(`/api/s/${encodeURIComponent(SID)}/${kind}${s ? "?" + s : ""}`);
}

// columns: [label, value(row) -> text|Node, className?]
function table(columns, rows, opts = {}) {
  const head = el("tr", {}, columns.map(([label, , cls]) => el("th", { class: cls }, label)));
  const trs = rows.map((r) => el("tr", { class: opts.rowClass ? opts.rowClass(r) : null, "data-id": opts.id ? opts.id(r) : null },
    columns.map(([, value, cls]) => { const v = value(r); return el("td", { class: cls }, v === null || v === undefined ? "" : v); })));
  return el("table", { class: opts.class }, el("thead", {}, head), el("tbody", {}, trs));
}

function pager(state, total, reload) {
  const from = total === 0 ? 0 : state.offset + 1;
  const to = Math.min(state.offset + state.limit, total);
  return el("div", { class: "pager" },
    el("button", { disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); reload(); } }, "‹ newer"),
    el("span", { class: "muted" }, `${from}–${to} of ${total}`),
    el("button", { disabled: to >= total, onclick: () => { state.offset += state.limit; reload(); } }, "older ›"));
}

function nodes(items) { return items.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false); }
function show(...items) { app.replaceChildren(...nodes(items)); }
function fail(err) { show(el("p", { class: "flag" }, String(err && err.message ? err.message : err))); }
function ideaLink(id, text) {
  return el("a", { class: "idea", "data-idea": id, onclick: (e) => { e.preventDefault(); openIdea(id); } }, text || id);
}
function cards(items) { return el("div", { class: "cards" }, items.map(([k, v]) => el("div", { class: "card" }, el("b", {}, v), k))); }

// -- an idea's detail (leaderboard, lineage) -----------------------------------------

async function openIdea(id) {
  detail.hidden = false;
  detail.replaceChildren(el("p", { class: "muted" }, "loading " + id + "…"));
  try {
    const d = await api("idea/" + encodeURIComponent(id));
    const code = el("div", { id: "code", class: "code" });
    if (d.code_html) code.innerHTML = d.code_html;  // Pygments' output: escaped by it
    else code.append(el("p", { class: "muted" }, d.code_source));
    detail.replaceChildren(...nodes([
      el("button", { onclick: () => { detail.hidden = true; } }, "close"),
      el("h2", {}, d.title || d.idea_id),
      el("p", { class: "mono" }, `${d.idea_id} · ${d.agent_id} · ${when(d.time)}`),
      el("h3", {}, "Hypothesis"), el("p", {}, d.hypothesis || ""),
      d.why ? el("p", { class: "muted" }, d.why) : null,
      (d.parent_ideas || []).length ? el("p", {}, "builds on ", (d.parent_ideas || []).map((p) => [ideaLink(p), " "])) : null,
      el("h3", {}, "Method"), el("p", { class: "mono" }, d.code_source + (d.params ? " · params " + JSON.stringify(d.params) : "")),
      code,
      el("h3", {}, "Scores"),
      table([["purpose", (r) => r.purpose], ["split", (r) => r.split], ["dataset", (r) => r.dataset],
        ["seeds", (r) => r.n_seeds, "num"], ["accuracy", (r) => pm(r.accuracy, r.accuracy_stderr), "num"],
        ["PGR", (r) => pm(r.pgr, r.pgr_stderr), "num"], ["at", (r) => when(r.time)]], d.scores),
      el("h3", {}, "Runs"),
      table([["experiment", (r) => r.experiment_id, "mono"], ["purpose/split", (r) => `${r.purpose}/${r.split}`],
        ["status", (r) => r.status], ["trainer", (r) => r.trainer_id], ["runtime", (r) => secs(r.runtime_s), "num"],
        ["attempts", (r) => r.attempts, "num"], ["error", (r) => r.error_message || ""]], d.runs),
      d.posts.length ? el("h3", {}, "Posts about it") : null,
      d.posts.length ? table([["post", (r) => r.title], ["by", (r) => r.agent_id], ["votes", (r) => r.vote_score, "num"]], d.posts) : null]));
  } catch (err) {
    detail.replaceChildren(el("p", { class: "flag" }, String(err.message || err)));
  }
}

// -- pages ---------------------------------------------------------------------------

const pages = {};

pages.sessions = async () => {
  const d = await getJSON("/api/sessions");
  show(el("h2", {}, "Sessions"),
    table([["session", (r) => el("a", { href: "/s/" + encodeURIComponent(r.session_id) }, r.session_id), "mono"],
      ["name", (r) => r.name], ["backend", (r) => r.backend], ["dataset", (r) => r.dataset],
      ["agents", (r) => r.agents, "num"], ["events", (r) => r.events, "num"], ["scores", (r) => r.scores, "num"],
      ["started", (r) => when(r.first_event)], ["last event", (r) => when(r.last_event)],
      ["end", (r) => r.end_reason || "running"], ["resumed", (r) => r.resumed || "", "num"]], d.sessions, { id: (r) => r.session_id }),
    el("p", { class: "muted" }, `${d.total} session(s)`));
};

pages.overview = async () => {
  const d = await api("overview");
  const t = d.totals;
  const config = d.config || {};
  const b = config.budgets || {};
  show(el("h2", {}, `${d.session.name || SID}`),
    cards([["end", d.session.end_reason || "running"],
      ["elapsed", secs(d.elapsed_s) + (b.max_wall_s ? ` / ${secs(b.max_wall_s)}` : "")],
      ["research hours", num(d.research_hours, 2)], ["ideas", t.ideas],
      ["dev scores", `${t.dev_experiments}` + (b.max_experiments ? ` / ${b.max_experiments}` : "")],
      ["experiments", t.experiments], ["failed", t.failed], ["duplicates", t.duplicates], ["posts", t.posts],
      ["integrity flags", t.integrity_flags],
      ["LLM cost", usd(t.cost_usd) + (b.max_usd ? ` / $${b.max_usd}` : "")],
      ["trainer time", secs(t.trainer_s)]]),
    el("h3", {}, "Agents"),
    table([["agent", (r) => r.agent_id], ["direction", (r) => r.direction], ["backend", (r) => r.backend],
      ["model", (r) => r.model], ["ideas", (r) => r.ideas, "num"], ["LLM calls", (r) => r.llm_calls, "num"],
      ["tokens in/out", (r) => `${r.input_tokens} / ${r.output_tokens}`, "num"], ["cost", (r) => usd(r.cost_usd), "num"],
      ["started", (r) => when(r.started_at)], ["stopped", (r) => r.stopped_at ? `${when(r.stopped_at)} (${r.stop_reason})` : "running"]],
    d.agents),
    el("h3", {}, "Configuration"), el("pre", { class: "config mono" }, JSON.stringify(config, null, 2)));
};

function figureTraces(f, reference) {
  const traces = [];
  const agents = f.agents.length ? f.agents : [...new Set(f.dots.map((d) => d.agent_id))];
  const end = Math.max(f.hours || 0, ...f.dots.map((d) => d.hours), 1e-6);
  for (const a of agents) {
    const c = color(agents, a);
    const steps = f.best[a] || [];
    traces.push({ x: steps.map((s) => s[0]), y: steps.map((s) => s[1]), mode: "lines", line: { shape: "hv", color: c, width: 2.5 },
      name: a + " best so far", legendgroup: a, meta: { kind: "best", agent: a } });
    const dots = f.dots.filter((d) => d.agent_id === a);
    traces.push({ x: dots.map((d) => d.hours), y: dots.map((d) => d.pgr), mode: "markers", type: "scatter",
      marker: { color: c, size: 8, opacity: 0.55 }, name: a + " ideas", legendgroup: a, customdata: dots.map((d) => d.idea_id),
      text: dots.map((d) => `${d.idea_id}<br>${d.method}`), hovertemplate: "%{text}<br>dev PGR %{y:.3f}<extra></extra>",
      meta: { kind: "dots", agent: a } });
  }
  const withTest = f.promoted.filter((p) => p.test_pgr !== null);
  if (withTest.length) traces.push({ x: withTest.map((p) => p.hours), y: withTest.map((p) => p.test_pgr), mode: "markers",
    marker: { symbol: "diamond", size: 11, color: withTest.map((p) => color(agents, p.agent_id)), line: { color: "#111", width: 1 } },
    name: "test PGR (promoted)", customdata: withTest.map((p) => p.idea_id), meta: { kind: "test" } });
  const withHeld = f.promoted.filter((p) => p.heldout_pgr !== null);
  if (withHeld.length) traces.push({ x: withHeld.map((p) => p.hours), y: withHeld.map((p) => p.heldout_pgr), mode: "markers",
    marker: { symbol: "star", size: 12, color: withHeld.map((p) => color(agents, p.agent_id)), line: { color: "#111", width: 1 } },
    name: "held-out PGR (" + (withHeld[0].heldout || "held-out") + ")", customdata: withHeld.map((p) => p.idea_id), meta: { kind: "heldout" } });
  if (f.naive_pgr !== null && f.naive_pgr !== undefined) traces.push({ x: [0, end], y: [f.naive_pgr, f.naive_pgr], mode: "lines",
    line: { color: "#6b7280", dash: "dash" }, name: `naive_soft ${num(f.naive_pgr, 2)}`, meta: { kind: "naive" } });
  const ref = reference || f.reference;
  if (ref) traces.push({ x: [0, end], y: [ref.pgr, ref.pgr], mode: "lines", line: { color: "firebrick", dash: "dot" },
    name: `${ref.label} ${num(ref.pgr, 2)}`, meta: { kind: "reference" } });
  return traces;
}

pages.figure = async () => {
  const f = await api("figure");
  let chart = document.getElementById("chart");
  if (!chart) {
    chart = el("div", { id: "chart" });
    show(el("h2", {}, "PGR over research hours"),
      el("p", { class: "muted" }, "Best-so-far dev PGR per agent against cumulative research hours (the agents' active time summed); every scored idea is a dot; diamonds and stars: test and held-out PGR of promoted ideas."),
      chart, el("p", { id: "figure-note", class: "muted" }));
  }
  const layout = { margin: { l: 60, r: 20, t: 20, b: 50 }, xaxis: { title: { text: "research hours" }, rangemode: "tozero" },
    yaxis: { title: { text: "PGR (dev)" } }, legend: { orientation: "h", y: -0.18 }, hovermode: "closest" };
  await Plotly.react(chart, figureTraces(f, REFERENCE), layout, { displaylogo: false, responsive: true });
  if (!chart.dataset.clicks) {
    chart.dataset.clicks = "1";
    chart.on("plotly_click", (ev) => { const p = ev.points[0]; if (p && p.customdata) openIdea(p.customdata); });
  }
  document.getElementById("figure-note").textContent =
    `${f.dots.length} scored idea(s) by ${f.agents.length} agent(s) over ${num(f.hours, 3)} research hours; ${f.promoted.length} promoted.`;
};

function vsCell(v) {
  if (!v || v.pgr_diff === null || v.pgr_diff === undefined) return "";
  const text = (v.pgr_diff >= 0 ? "+" : "") + pm(v.pgr_diff, v.pgr_diff_se);
  return v.tied ? el("span", { class: "tie", title: "tied: the 95% interval holds 0" }, text + " ≈") : text;
}

const board = { limit: 50, offset: 0 };
pages.leaderboard = async () => {
  const d = await api("leaderboard", board);
  show(el("h2", {}, "Leaderboard"),
    el("p", { class: "muted" }, "Dev PGR ± SE; paired differences (± SE) against naive_soft, the parent and the leader at scoring time; ≈ marks a tie (the 95% interval holds 0). Test and held-out PGR for promoted ideas."),
    table([["#", (r) => r.rank, "num"], ["idea", (r) => ideaLink(r.idea_id, r.title || r.idea_id)], ["agent", (r) => r.agent_id],
      ["method", (r) => r.method], ["dev PGR", (r) => pm(r.pgr, r.se), "num"], ["vs naive_soft", (r) => vsCell(r.vs.naive_soft), "num"],
      ["vs parent", (r) => vsCell(r.vs.parent), "num"], ["vs leader", (r) => vsCell(r.vs.leader), "num"],
      ["test PGR", (r) => pm(r.test_pgr, r.test_se), "num"], ["held-out PGR", (r) => pm(r.heldout_pgr, r.heldout_se), "num"],
      ["flags", (r) => r.flags ? el("span", { class: "flag" }, r.flags) : ""]], d.rows, { id: (r) => r.idea_id }),
    pager(board, d.total, refresh));
};

pages.lineage = async () => {
  const d = await api("lineage");
  let graph = document.getElementById("graph");
  if (!graph) {
    graph = el("div", { id: "graph" });
    show(el("h2", {}, "Idea lineage"),
      el("p", { class: "muted" }, "One lane per agent, ideas placed at the research hours of their proposal; solid edges: builds on (parent ideas), dotted: cites a post; thick edges cross agents, coloured by the agent that built on the other. Click a node for its code, scores and runs."),
      graph, el("p", { id: "lineage-note", class: "muted" }));
  }
  const agents = d.agents.length ? d.agents : [...new Set(d.nodes.map((n) => n.agent_id))];
  const pos = {};
  for (const n of d.nodes) pos[n.id] = [n.hours, agents.indexOf(n.agent_id) + (n.kind === "post" ? 0.3 : 0)];
  const traces = [];
  for (const kind of ["parent", "cites"]) for (const cross of [false, true]) for (const a of agents) {
    const xs = [], ys = [];
    for (const e of d.edges) {
      if (e.kind !== kind || e.cross !== cross || e.agent_id !== a || !pos[e.from] || !pos[e.to]) continue;
      xs.push(pos[e.from][0], pos[e.to][0], null); ys.push(pos[e.from][1], pos[e.to][1], null);
    }
    if (xs.length) traces.push({ x: xs, y: ys, mode: "lines", hoverinfo: "skip", showlegend: false,
      line: { color: color(agents, a), width: cross ? 3 : 1.2, dash: kind === "cites" ? "dot" : "solid" }, meta: { kind: "edges" } });
  }
  for (const a of agents) {
    const ns = d.nodes.filter((n) => n.agent_id === a);
    traces.push({ x: ns.map((n) => pos[n.id][0]), y: ns.map((n) => pos[n.id][1]), mode: "markers", name: a,
      marker: { color: color(agents, a), size: ns.map((n) => (n.kind === "post" ? 9 : 12)), symbol: ns.map((n) => (n.kind === "post" ? "diamond" : "circle")),
        line: { color: "#fff", width: 1 } },
      customdata: ns.map((n) => n.id), text: ns.map((n) => `${n.kind === "post" ? "post" : n.method}: ${String(n.title || "").slice(0, 60)}<br>${n.id}` + (n.pgr === null ? "" : `<br>dev PGR ${num(n.pgr)}`)),
      hovertemplate: "%{text}<extra></extra>", meta: { kind: "nodes", agent: a, ids: ns.map((n) => n.id), kinds: ns.map((n) => n.kind) } });
  }
  const layout = { margin: { l: 80, r: 20, t: 20, b: 50 }, showlegend: true, hovermode: "closest",
    xaxis: { title: { text: "research hours" }, zeroline: false },
    yaxis: { tickvals: agents.map((_, i) => i), ticktext: agents, range: [-0.6, agents.length - 0.4], zeroline: false } };
  await Plotly.react(graph, traces, layout, { displaylogo: false, responsive: true });
  if (!graph.dataset.clicks) {
    graph.dataset.clicks = "1";
    graph.on("plotly_click", (ev) => {
      const p = ev.points.find((q) => q.data.meta && q.data.meta.kind === "nodes");
      if (!p) return;
      if (p.data.meta.kinds[p.pointIndex] === "idea") openIdea(p.customdata);
    });
  }
  const crossN = d.edges.filter((e) => e.cross).length;
  document.getElementById("lineage-note").textContent =
    (d.ideas_shown < d.ideas_total ? `The latest ${d.ideas_shown} of ${d.ideas_total} ideas` : `${d.ideas_shown} idea(s)`) +
    `, ${d.edges.length} edge(s), ${crossN} across agents.`;
};

const forumState = { limit: 50, offset: 0 };
function postNode(p, reply) {
  return el("div", { class: (reply ? "reply" : "") + (p.hidden ? " hidden-post" : "") },
    el("div", {}, el("b", {}, p.title || "(reply)"), " ", el("span", { class: "muted" }, `${p.agent_id} · ${when(p.time)} · votes ${p.vote_score} (${p.votes})` + (p.hidden ? " · hidden by moderation" : ""))),
    el("div", { class: "body" }, p.body || ""),
    (p.idea_ids || []).length ? el("div", { class: "muted" }, "ideas: ", (p.idea_ids || []).map((i) => [el("span", { class: "mono" }, i), " "])) : null);
}
pages.forum = async () => {
  const d = await api("forum", forumState);
  show(el("h2", {}, "Forum"),
    d.threads.length ? d.threads.map((t) => el("div", { class: "post", "data-id": t.post_id }, postNode(t, false), t.replies.map((r) => postNode(r, true))))
      : el("p", { class: "muted" }, "no posts yet"),
    pager(forumState, d.total, refresh));
};

const expState = { limit: 100, offset: 0, status: "" };
pages.experiments = async () => {
  const d = await api("experiments", expState);
  const select = el("select", { onchange: (e) => { expState.status = e.target.value; expState.offset = 0; refresh(); } },
    ["", "requested", "started", "finished", "failed"].map((s) => el("option", { value: s, selected: s === expState.status }, s || "all")));
  show(el("h2", {}, "Experiments and trainers"),
    cards(Object.entries(d.counts).map(([k, v]) => [k, v])),
    el("h3", {}, "Trainers"),
    table([["trainer", (r) => r.trainer_id], ["runs", (r) => r.runs, "num"], ["finished", (r) => r.finished, "num"],
      ["failed", (r) => r.failed, "num"], ["running", (r) => r.running, "num"], ["time", (r) => secs(r.runtime_s), "num"],
      ["peak RSS MB", (r) => num(r.peak_rss_mb, 0), "num"]], d.trainers),
    el("h3", {}, "Queue ", select),
    table([["experiment", (r) => r.experiment_id, "mono"], ["idea", (r) => r.idea_id || "", "mono"], ["agent", (r) => r.agent_id],
      ["purpose/split", (r) => `${r.purpose}/${r.split}`], ["dataset", (r) => r.dataset], ["method", (r) => r.method],
      ["status", (r) => el("span", { class: "status-" + r.status }, r.status)], ["requested", (r) => when(r.requested_at)],
      ["trainer", (r) => r.trainer_id], ["runtime", (r) => secs(r.runtime_s), "num"], ["attempts", (r) => r.attempts, "num"],
      ["error", (r) => (r.error_class ? r.error_class + ": " : "") + (r.error_message || "")]], d.rows, { id: (r) => r.experiment_id }),
    pager(expState, expState.status ? (d.counts[expState.status] || 0) : d.total, refresh));
};

const costState = { limit: 100, offset: 0 };
pages.costs = async () => {
  const d = await api("costs", costState);
  show(el("h2", {}, "Cost and tokens"),
    el("h3", {}, "Per agent"),
    table([["agent", (r) => r.agent_id], ["backend", (r) => r.backend], ["model", (r) => r.model], ["LLM calls", (r) => r.llm_calls, "num"],
      ["input tokens", (r) => r.input_tokens, "num"], ["output tokens", (r) => r.output_tokens, "num"], ["cost", (r) => usd(r.cost_usd), "num"],
      ["tool calls", (r) => r.tool_calls, "num"], ["ideas", (r) => r.ideas, "num"], ["trainer time", (r) => secs(r.trainer_s), "num"]], d.agents),
    el("h3", {}, "Per idea"),
    table([["idea", (r) => r.idea_id, "mono"], ["agent", (r) => r.agent_id], ["title", (r) => r.title], ["LLM calls", (r) => r.llm_calls, "num"],
      ["tokens in/out", (r) => `${r.input_tokens} / ${r.output_tokens}`, "num"], ["cost", (r) => usd(r.cost_usd), "num"],
      ["experiments", (r) => r.experiments, "num"], ["trainer time", (r) => secs(r.trainer_s), "num"]], d.ideas));
};

const flagState = { limit: 100, offset: 0 };
pages.integrity = async () => {
  const d = await api("integrity", flagState);
  show(el("h2", {}, "Integrity flags"),
    d.counts.length ? cards(d.counts.map((c) => [`${c.check} (${c.severity})`, c.n])) : el("p", { class: "muted" }, "no integrity flags"),
    table([["at", (r) => when(r.time)], ["check", (r) => el("span", { class: "flag" }, r.check)], ["severity", (r) => r.severity],
      ["agent", (r) => r.agent_id], ["idea", (r) => r.idea_id || "", "mono"], ["experiment", (r) => r.experiment_id || "", "mono"],
      ["detail", (r) => r.detail]], d.rows));
};

const evState = { type: "", agent: "", before_us: null, shown: new Set() };
function eventRow(e, fresh) {
  return el("tr", { class: fresh ? "new" : null, "data-id": e.id },
    el("td", { class: "mono" }, when(e.time)), el("td", { class: "mono" }, e.type), el("td", {}, e.source),
    el("td", { class: "mono" }, String(e.payload || "").slice(0, 300)));
}
function matches(e) {
  return (!evState.type || e.type.startsWith(evState.type)) &&
    (!evState.agent || e.source === evState.agent || e.agent_id === evState.agent);
}
pages.events = async () => {
  const d = await api("events", { type: evState.type, agent: evState.agent, limit: 200 });
  evState.shown = new Set(d.events.map((e) => e.id));
  evState.before_us = d.next_before_us;
  const typeSel = el("select", { id: "type-filter", onchange: (e) => { evState.type = e.target.value; refresh(); } },
    el("option", { value: "" }, "every type"),
    [...new Set(d.types.map((t) => t.split(".")[0] + "."))].map((p) => el("option", { value: p, selected: p === evState.type }, p + "*")),
    d.types.map((t) => el("option", { value: t, selected: t === evState.type }, t)));
  const agentIn = el("input", { id: "agent-filter", placeholder: "agent or source", value: evState.agent,
    onchange: (e) => { evState.agent = e.target.value.trim(); refresh(); } });
  const tbody = el("tbody", { id: "events" }, d.events.map((e) => eventRow(e, false)));
  const more = el("button", { disabled: !evState.before_us, onclick: async () => {
    const older = await api("events", { type: evState.type, agent: evState.agent, limit: 200, before_us: evState.before_us });
    for (const e of older.events) if (!evState.shown.has(e.id)) { evState.shown.add(e.id); tbody.append(eventRow(e, false)); }
    evState.before_us = older.next_before_us; more.disabled = !evState.before_us;
  } }, "older events");
  show(el("h2", {}, "Events"), el("div", { class: "pager" }, "filter: ", typeSel, agentIn),
    el("table", {}, el("thead", {}, el("tr", {}, ["time", "type", "source", "payload"].map((h) => el("th", {}, h)))), tbody), more);
};
pages.events.live = (e) => {
  const tbody = document.getElementById("events");
  if (!tbody || evState.shown.has(e.id) || !matches(e)) return;
  evState.shown.add(e.id);
  tbody.prepend(eventRow(e, true));
};

// -- live ------------------------------------------------------------------------------

let refreshing = null;
let again = false;
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    try { await pages[PAGE](); } catch (err) { fail(err); }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; setTimeout(refresh, 1000); }  // a busy session: at most about one reload a second
}

function connect() {
  const badge = document.getElementById("live");
  const last = document.getElementById("live-last");
  const source = new EventSource("/api/stream" + (SID ? "?session=" + encodeURIComponent(SID) : ""));
  source.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
  source.onerror = () => { badge.textContent = "reconnecting"; badge.className = "live off"; };
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    window.aarEvents = (window.aarEvents || 0) + 1;
    last.textContent = `${when(e.time).slice(11)} ${e.type} ${e.agent_id || e.source}`;
    last.dataset.id = e.id;
    if (pages[PAGE].live) pages[PAGE].live(e);
    else refresh();
  });
  source.addEventListener("lagged", () => refresh());
}

refresh().then(() => { body.dataset.ready = "1"; });
connect();
