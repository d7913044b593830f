// The modelvc console: one page, hash routes, no framework, no build step.
//
// It reads only what the API serves and acts only through it, with compare-and-set
// (`expect`). Everything the API returns was written by someone else (messages, actors,
// reasons, ref names): it is only ever inserted as text (textContent / text nodes), never
// parsed as HTML. The CSP forbids inline styles too, so layout is CSS classes and SVG
// attributes only.

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;
const MONITOR_WINDOWS = 60;
const ROLES = ["reader", "committer", "releaser", "admin"];
const SHORT = 10; // characters of a commit id shown, as the CLI does
const MAX_DECISION_FETCHES = 20; // newest rollouts whose decisions are read on one page
const SHOWN_INPUTS = 40; // a signature's inputs listed before "and N more" (the CLI's fold)

const app = {
  session: null, // {actor, role, csrf, expires_ms}
  model: null, // the model of the last model page, for the nav
  view: 0, // bumped on every navigation: answers for an older view are dropped
  timer: null,
  times: new Map(), // model -> its event times (ms, ascending), for the time control
};

// -- DOM -------------------------------------------------------------------------------
function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An HTML element: attrs (class, data-*, aria-*, on<event>, text) and children (nodes or text).
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  return append(node, children);
}

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  return append(node, children);
}

const $ = (selector, root = document) => root.querySelector(selector);
const main = () => $("#main");

function short(id) {
  return id ? String(id).slice(0, SHORT) : "-";
}

function pad2(n) {
  return String(n).padStart(2, "0");
}

// A time in ms since the epoch, as the CLI prints it; a value no calendar holds is shown raw.
function when(ms) {
  const d = new Date(Number(ms));
  if (!Number.isFinite(Number(ms)) || Number.isNaN(d.getTime())) return `${String(ms).slice(0, 40)} ms`;
  return (
    `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ` +
    `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} UTC`
  );
}

function timeEl(ms) {
  const d = new Date(Number(ms));
  const iso = Number.isNaN(d.getTime()) ? undefined : d.toISOString();
  return h("time", { datetime: iso, text: when(ms) });
}

function figure(value, digits = 4) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "-";
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return String(Number(value.toPrecision(digits)));
}

function percent(value) {
  return typeof value === "number" && Number.isFinite(value) ? `${(value * 100).toFixed(1)}%` : "-";
}

function announce(text) {
  const status = $("[data-testid=status]");
  status.textContent = "";
  // A fresh text node so that screen readers read a repeated message again.
  requestAnimationFrame(() => {
    status.textContent = text;
  });
}

function errorBox(message) {
  return h("p", { class: "error", role: "alert", "data-testid": "error", text: message });
}

// -- the API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const data = body && typeof body === "object" ? body : {};
    super(typeof data.message === "string" ? data.message : `the service answered HTTP ${status}`);
    this.status = status;
    this.body = data;
    this.code = data.error || data.code || "";
  }
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET" && method !== "HEAD") {
    init.headers["X-CSRF-Token"] = app.session ? app.session.csrf : "";
    if (method !== "DELETE") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body ?? {});
    }
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, {
      error: "unreachable",
      message: "the modelvc service does not answer; is it running (`modelvc up`)?",
    });
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && app.session && !path.startsWith("/ui/session")) {
      signedOut("Your session ended: sign in again.");
    }
    throw error;
  }
  return data;
}

const enc = encodeURIComponent;
const modelPath = (model, rest = "") => `/v1/models/${enc(model)}${rest}`;

// The API reads a plain integer as an event offset, so a time goes as ISO-8601. Half a
// millisecond on top: the server floors its float seconds, and the chosen event must
// not fall out of the cut by rounding (events are stamped in whole ms).
function asOfParam(ms) {
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, 23)}500Z`;
}

// -- sign-in ---------------------------------------------------------------------------
function hasRole(needed) {
  const mine = app.session ? ROLES.indexOf(app.session.role) : -1;
  return mine >= 0 && mine >= ROLES.indexOf(needed);
}

function showIdentity() {
  const who = $(".who");
  const nav = $(".nav");
  if (app.session) {
    $("[data-testid=whoami]").textContent = `${app.session.actor} (${app.session.role})`;
    who.hidden = false;
    nav.hidden = false;
  } else {
    who.hidden = true;
    nav.hidden = true;
    $("[data-testid=model-name]").textContent = "";
  }
}

function signedOut(message) {
  app.session = null;
  stopPolling();
  showIdentity();
  renderSignIn(message);
}

function renderSignIn(message) {
  document.title = "Sign in · modelvc";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "mvc_…",
  });
  const problem = h("div", { class: "slot" });
  const form = h(
    "form",
    { "data-testid": "signin", class: "card signin", novalidate: true },
    h("h1", { text: "Sign in" }),
    h(
      "p",
      { class: "muted" },
      "Run ",
      h("code", { text: "modelvc ui" }),
      " to open the console signed in, or paste a token (an admin creates one with ",
      h("code", { text: "modelvc token create NAME --role reader" }),
      ").",
    ),
    h("label", { for: "token", text: "Token" }),
    input,
    problem,
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", text: "Sign in" })),
  );
  if (message) problem.append(errorBox(message));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    const token = input.value.trim();
    if (!token) {
      problem.append(errorBox("Paste a token first (it starts with mvc_)."));
      input.focus();
      return;
    }
    try {
      await startSession({ token });
      input.value = "";
    } catch (error) {
      problem.append(errorBox(error.message));
      input.focus();
    }
  });
  main().replaceChildren(form);
  input.focus();
}

async function startSession(credentials) {
  app.session = await api("/ui/session", { method: "POST", body: credentials });
  showIdentity();
  render();
}

async function boot() {
  $("[data-testid=signout]").addEventListener("click", async () => {
    try {
      await api("/ui/session", { method: "DELETE" });
    } catch (error) {
      if (error.status !== 401) announce(`Sign-out failed: ${error.message}`);
    }
    signedOut();
  });
  window.addEventListener("hashchange", () => {
    if (app.session) render();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && app.timer) app.timer.tick();
  });
  // `modelvc ui` opens #code=<login code>: it is exchanged once and taken off the address
  // bar at once (only the fragment carried it, so no server log or Referer saw it).
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (code !== null) history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  let current = null;
  try {
    current = await api("/ui/session");
  } catch (error) {
    if (code === null) {
      app.session = null;
      showIdentity();
      renderSignIn(error.status === 401 ? "" : error.message);
      return;
    }
  }
  // A link from someone else would otherwise sign this browser in as them without a word
  // (login CSRF: what the user then does lands in the other account): with a session open,
  // the user says whether to switch.
  if (code !== null && (current === null || window.confirm(`Switch from ${current.actor} to the account in this link?`))) {
    try {
      await startSession({ code });
      return;
    } catch (error) {
      const message = `The login link did not work (${error.message}); run \`modelvc ui\` again`;
      if (current === null) {
        signedOut(`${message} or paste a token.`);
        return;
      }
      announce(`${message}. Still signed in as ${current.actor}.`);
    }
  }
  app.session = current;
  showIdentity();
  render();
}

// -- routing ---------------------------------------------------------------------------
function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const cut = raw.indexOf("?");
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const params = new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1));
  const parts = path.split("/").filter(Boolean).map(decode);
  if (parts.length === 0) return { page: "models", params };
  if (parts[0] === "audit" && parts.length === 1) return { page: "audit", params };
  if (parts[0] === "m" && parts.length === 2) return { page: "history", model: parts[1], params };
  if (parts[0] === "m" && parts.length === 3 && ["serving", "rollouts"].includes(parts[2])) {
    return { page: parts[2], model: parts[1], params };
  }
  return { page: "missing", params };
}

const modelHash = (model, page = "") => `#/m/${enc(model)}${page ? `/${page}` : ""}`;

function renderNav(current) {
  const links = [["models", "#/", "Models"]];
  if (app.model) {
    links.push(
      ["history", modelHash(app.model), "History"],
      ["serving", modelHash(app.model, "serving"), "Serving"],
      ["rollouts", modelHash(app.model, "rollouts"), "Rollouts"],
    );
  }
  links.push(["audit", "#/audit", "Audit"]);
  const nav = $(".nav");
  nav.replaceChildren(
    h(
      "ul",
      {},
      links.map(([page, href, label]) =>
        h("li", {}, h("a", { href, "aria-current": page === current ? "page" : undefined, text: label })),
      ),
    ),
  );
  $("[data-testid=model-name]").textContent = app.model && current !== "models" && current !== "audit" ? app.model : "";
}

function stopPolling() {
  if (app.timer) {
    clearInterval(app.timer.id);
    app.timer = null;
  }
}

function render() {
  stopPolling();
  app.view += 1;
  const where = route();
  if (where.model) app.model = where.model;
  renderNav(where.page);
  const view = app.view;
  const pages = {
    models: renderModels,
    history: renderHistory,
    serving: renderServing,
    rollouts: renderRollouts,
    audit: renderAudit,
    missing: renderMissing,
  };
  pages[where.page](where, view).catch((error) => {
    if (view !== app.view || error.status === 401) return;
    main().replaceChildren(h("h1", { text: "Something went wrong" }), errorBox(error.message));
  });
}

const current = (view) => view === app.view;

function pageHeading(title, subtitle) {
  document.title = `${title} · modelvc`;
  return h("div", { class: "page-head" }, h("h1", { text: title }), subtitle ? h("p", { class: "muted", text: subtitle }) : null);
}

async function renderMissing() {
  main().replaceChildren(
    pageHeading("Not found"),
    h("p", {}, "No page here. ", h("a", { href: "#/", text: "See every model" }), "."),
  );
}

// -- models ----------------------------------------------------------------------------
function refChips(entries, prefix, kind) {
  return entries.map(([name, target]) =>
    h(
      "span",
      { class: `chip chip-${kind}` },
      h("span", { class: "chip-name", text: `${prefix}${name}` }),
      h("code", { class: "chip-commit", text: short(target) }),
    ),
  );
}

async function renderModels(where, view) {
  main().replaceChildren(pageHeading("Models"), h("p", { class: "muted", text: "Loading…" }));
  const answer = await api("/v1/models");
  if (!current(view)) return;
  const models = answer.models || [];
  const search = h("input", {
    id: "model-search",
    type: "search",
    placeholder: "Filter by model, branch or alias",
    autocomplete: "off",
  });
  const count = h("p", { class: "muted count", "aria-live": "polite" });
  const rows = models.map((m) => {
    const branches = Object.entries(m.branches || {});
    const aliases = Object.entries(m.aliases || {});
    const row = h(
      "a",
      { class: "model-row", href: modelHash(m.name), "data-testid": "model-row", "data-model": m.name },
      h(
        "span",
        { class: "model-title" },
        h("span", { class: "model-label", text: m.name }),
        h("span", { class: "muted small", text: `${m.commits} commit${m.commits === 1 ? "" : "s"}` }),
      ),
      h(
        "span",
        { class: "chips" },
        refChips(branches, "", "branch"),
        refChips(aliases, "@", "alias"),
        aliases.length ? null : h("span", { class: "muted small", text: "no aliases" }),
      ),
    );
    const haystack = [m.name, ...branches.map(([b]) => b), ...aliases.map(([a]) => `@${a}`)].join(" ").toLowerCase();
    return { row, haystack, item: h("li", {}, row) };
  });
  const filter = () => {
    const needle = search.value.trim().toLowerCase();
    let shown = 0;
    for (const r of rows) {
      r.item.hidden = needle !== "" && !r.haystack.includes(needle);
      if (!r.item.hidden) shown += 1;
    }
    count.textContent = needle ? `${shown} of ${rows.length} models` : `${rows.length} model${rows.length === 1 ? "" : "s"}`;
  };
  search.addEventListener("input", filter);
  const body = models.length
    ? h("ul", { class: "model-list" }, rows.map((r) => r.item))
    : h(
        "div",
        { class: "card empty" },
        h("p", {}, "No models yet. Create one with ", h("code", { text: "modelvc create churn" }), "."),
      );
  main().replaceChildren(
    pageHeading("Models", "Every model with its branches, its aliases and the commit each serves."),
    h("div", { class: "search" }, h("label", { for: "model-search", text: "Search models" }), search, count),
    body,
  );
  filter();
}

// -- history: the graph ----------------------------------------------------------------
const LANE_W = 16;
const GRAPH_PAD = 12;
const ROW_COMMIT = 36;
const ROW_LINK = 14;
const NODE_R = 5;
const LANE_COLOURS = 6; // .lane-0 ... .lane-5 in the stylesheet
const CHAR_W = 7.23; // width of one character of the 12 px monospace face of the graph

function laneX(lane) {
  return GRAPH_PAD + lane * LANE_W + LANE_W / 2;
}

// What else serves each commit besides its refs (the CLI's render.traffic).
function trafficLabels(log) {
  const out = new Map();
  const add = (id, label) => out.set(id, [...(out.get(id) || []), label]);
  for (const shadow of log.shadows || []) add(shadow.candidate, { kind: "shadow", text: `shadow of @${shadow.alias}` });
  for (const r of log.rollouts || []) {
    if (r.status === "running" || r.status === "paused") {
      add(r.candidate, { kind: "canary", text: `canary ${r.percent}% of @${r.alias}` });
    }
  }
  return out;
}

function labelsOf(commit, traffic) {
  const refs = (commit.refs || []).map((name) => ({ kind: name.startsWith("@") ? "alias" : "branch", text: name }));
  return [...refs, ...(traffic.get(commit.id) || [])];
}

// The rows of `log --graph` (the server's one lane layout, ?graph=1); a server without
// them gets one column and no lines rather than a layout of our own.
function graphRows(log) {
  if (Array.isArray(log.graph)) return log.graph;
  return (log.commits || []).map((c) => ({ kind: "commit", lanes: [true], column: 0, commit: c.id, marks: [] }));
}

// The lines between rows, from the rows alone: a lane live in two rows joins them; a fork
// row inserts a lane (those right of it shift one to the right); a join row's "/" lanes
// end in the next commit. A root commit's lane carries nothing down.
function edgePaths(rows, ys, commits, hasGraph) {
  const paths = Array.from({ length: LANE_COLOURS }, () => []);
  if (!hasGraph) return paths;
  const line = (x1, y1, x2, y2, lane) => {
    const d = x1 === x2 ? `M${x1} ${y1}V${y2}` : `M${x1} ${y1}C${x1} ${(y1 + y2) / 2} ${x2} ${(y1 + y2) / 2} ${x2} ${y2}`;
    paths[lane % LANE_COLOURS].push(d);
  };
  const nextCommitColumn = (from) => {
    for (let k = from; k < rows.length; k += 1) if (rows[k].kind === "commit") return [k, rows[k].column];
    return [rows.length - 1, 0];
  };
  for (let r = 1; r < rows.length; r += 1) {
    const prev = rows[r - 1];
    const cur = rows[r];
    const rootAbove = prev.kind === "commit" && (commits.get(prev.commit)?.parents || []).length === 0;
    const down = (i) => Boolean(prev.lanes[i]) && !(rootAbove && i === prev.column);
    const marks = cur.marks || [];
    const fork = cur.kind === "fork" ? marks.find(([, m]) => m === "\\") : undefined;
    const joined = new Set(cur.kind === "join" ? marks.filter(([, m]) => m === "/").map(([lane]) => lane) : []);
    for (let i = 0; i < prev.lanes.length; i += 1) {
      if (!down(i)) continue;
      if (fork) {
        const at = fork[0];
        const j = i < at ? i : i + 1;
        if (cur.lanes[j]) line(laneX(i), ys[r - 1], laneX(j), ys[r], j);
        if (i === at - 1) line(laneX(i), ys[r - 1], laneX(at), ys[r], at);
      } else if (joined.has(i)) {
        const [k, column] = nextCommitColumn(r + 1);
        line(laneX(i), ys[r - 1], laneX(column), ys[k], column);
      } else if (cur.lanes[i]) {
        line(laneX(i), ys[r - 1], laneX(i), ys[r], i);
      }
    }
  }
  return paths;
}

function drawGraph(log, hv) {
  const rows = graphRows(log);
  const hasGraph = Array.isArray(log.graph);
  const commits = new Map((log.commits || []).map((c) => [c.id, c]));
  const traffic = trafficLabels(log);
  const ys = [];
  const tops = [];
  let height = 0;
  let lanes = 1;
  for (const row of rows) {
    const tall = row.kind === "commit" ? ROW_COMMIT : ROW_LINK;
    tops.push(height);
    ys.push(height + tall / 2);
    height += tall;
    lanes = Math.max(lanes, (row.lanes || []).length + (row.kind === "fork" ? 1 : 0));
  }
  const textX = GRAPH_PAD + lanes * LANE_W + 8;
  const svg = s("svg", {
    "data-testid": "graph",
    class: "graph",
    width: "100%",
    height: Math.max(height, 1),
    role: "group",
    "aria-label": `commit graph of ${log.model}: ${commits.size} commits, newest first`,
  });
  const frag = document.createDocumentFragment(); // one pass, one insertion
  edgePaths(rows, ys, commits, hasGraph).forEach((ds, colour) => {
    if (ds.length) frag.append(s("path", { class: `edge lane-${colour}`, d: ds.join("") }));
  });
  const picks = document.createDocumentFragment();
  rows.forEach((row, r) => {
    if (row.kind !== "commit") {
      picks.append(h("li", { class: "pick-link", "aria-hidden": "true" }));
      return;
    }
    const c = commits.get(row.commit);
    if (!c) return;
    const y = ys[r];
    const top = tops[r];
    const lane = Math.max(0, row.column);
    const merge = (c.parents || []).length > 1;
    const g = s("g", {
      class: `commit${c.reachable === false ? " unreachable" : ""}`,
      "data-testid": "commit",
      "data-commit": c.id,
      tabindex: "0",
      role: "button",
      "aria-pressed": "false",
      "aria-label": `commit ${short(c.id)}: ${c.message}`,
    });
    g.append(
      s("rect", { class: "hit", x: 0, y: top + 1, width: "100%", height: ROW_COMMIT - 2, rx: 4 }),
      s("circle", {
        class: `node lane-${lane % LANE_COLOURS}${merge ? " merge" : ""}`,
        cx: laneX(lane),
        cy: y,
        r: merge ? NODE_R + 1 : NODE_R,
      }),
      s("text", { class: "sha", x: textX, y: y + 4, text: short(c.id) }),
    );
    let x = textX + SHORT * CHAR_W + 10;
    for (const label of labelsOf(c, traffic)) {
      const width = label.text.length * CHAR_W + 12;
      g.append(
        s(
          "g",
          { class: `ref-label ref-${label.kind}`, "data-testid": "ref-label", "data-ref": label.text },
          s("rect", { x, y: y - 10, width, height: 20, rx: 10 }),
          s("text", { x: x + 6, y: y + 4, text: label.text }),
        ),
      );
      x += width + 6;
    }
    const gone = c.reachable === false ? " [unreachable]" : "";
    g.append(
      s(
        "text",
        { class: "message", x: x + 4, y: y + 4 },
        s("tspan", { text: c.message + gone }),
        s("tspan", { class: "byline", text: `  ${c.author} · ${when(c.at)}` }),
      ),
    );
    frag.append(g);
    picks.append(
      h(
        "li",
        { class: "pick-commit" },
        h("input", {
          type: "checkbox",
          "data-testid": "diff-pick",
          value: c.id,
          checked: hv.picks.has(c.id),
          "aria-label": `compare commit ${short(c.id)}`,
        }),
      ),
    );
  });
  svg.append(frag);
  return { svg, picks };
}

// -- history: details, diff, timeline --------------------------------------------------
function keyValues(title, entries, format = (v) => String(v)) {
  if (!entries.length) return h("p", { class: "muted small", text: `no ${title}` });
  return h(
    "table",
    { class: "kv" },
    h("caption", { text: title }),
    h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k }), h("td", { text: format(v) })))),
  );
}

function signatureBlock(sig) {
  if (!sig) return h("p", { class: "muted small", text: "signature: none recorded (committed before commits recorded one)" });
  const inputs = sig.inputs || [];
  const listed = inputs.slice(0, SHOWN_INPUTS).map((f) => h("li", {}, h("code", { text: f.name }), ` ${f.type}`));
  if (inputs.length > SHOWN_INPUTS) listed.push(h("li", { class: "muted", text: `… and ${(inputs.length - SHOWN_INPUTS).toLocaleString("en")} more` }));
  // An ONNX model's graph: its inputs and every output, with element types and shapes.
  const graph = (sig.graph || []).map((t) =>
    h("li", {}, `${t.kind} `, h("code", { text: t.name }), ` ${t.shape.length ? `${t.type}[${t.shape.join(",")}]` : t.type}`),
  );
  return h(
    "details",
    { class: "signature" },
    h("summary", { text: `signature: ${sig.format}, ${inputs.length.toLocaleString("en")} input(s), ${sig.outputs} output(s)` }),
    h("ul", { class: "inputs" }, listed),
    graph.length ? h("ul", { class: "inputs", "data-testid": "graph" }, graph) : null,
  );
}

function commitDetail(c, traffic, select) {
  const labels = labelsOf(c, traffic);
  return [
    h("h2", {}, "Commit ", h("code", { text: short(c.id) })),
    labels.length ? h("p", { class: "chips" }, labels.map((l) => h("span", { class: `chip chip-${l.kind}`, text: l.text }))) : null,
    h("p", { class: "message-full", text: c.message }),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "id" }),
      h("dd", {}, h("code", { class: "wrap", text: c.id })),
      h("dt", { text: "author" }),
      h("dd", { text: c.author }),
      h("dt", { text: "time" }),
      h("dd", {}, timeEl(c.at)),
      h("dt", { text: "parents" }),
      h(
        "dd",
        {},
        (c.parents || []).length
          ? c.parents.map((p) => h("button", { type: "button", class: "link", onclick: () => select(p, true), text: short(p) }))
          : "none (a root commit)",
      ),
      h("dt", { text: "artifact" }),
      h("dd", {}, h("code", { class: "wrap", "data-testid": "artifact-digest", text: `sha256:${c.artifact_sha256}` })),
      c.reference_sha256 ? h("dt", { text: "reference" }) : null,
      c.reference_sha256 ? h("dd", {}, h("code", { class: "wrap", text: `sha256:${c.reference_sha256}` })) : null,
    ),
    h(
      "p",
      {},
      h("a", {
        class: "button",
        "data-testid": "download",
        href: `/v1/artifacts/${enc(c.artifact_sha256)}`,
        download: `model-${short(c.id)}.${c.signature && c.signature.format === "onnx" ? "onnx" : "txt"}`,
        text: "Download model",
      }),
    ),
    keyValues("params", Object.entries(c.params || {}).sort()),
    keyValues("metrics", Object.entries(c.metrics || {}).sort(), (v) => figure(v, 6)),
    signatureBlock(c.signature),
    c.reachable === false ? h("p", { class: "muted small", text: "No branch or alias reaches this commit any more." }) : null,
  ];
}

function diffView(d) {
  const rows = [];
  if (d.artifact_changed) rows.push(["model file (sha256)", short(d.a.artifact_sha256), short(d.b.artifact_sha256), "changed"]);
  for (const section of ["params", "metrics"]) {
    for (const change of d[section] || []) {
      const delta =
        section === "metrics" && typeof change.old === "number" && typeof change.new === "number"
          ? `${change.new - change.old >= 0 ? "+" : ""}${figure(change.new - change.old, 4)}`
          : "";
      rows.push([`${section.slice(0, -1)} ${change.key}`, change.old ?? "(none)", change.new ?? "(none)", delta]);
    }
  }
  const sig = d.signature;
  if (sig) {
    for (const f of sig.added || []) rows.push([`feature ${f.name}`, "(none)", f.type, "added"]);
    for (const f of sig.removed || []) rows.push([`feature ${f.name}`, f.type, "(none)", "removed"]);
    for (const f of sig.retyped || []) rows.push([`feature ${f.name}`, f.old, f.new, "retyped"]);
    if (sig.outputs) rows.push(["outputs", sig.outputs.old, sig.outputs.new, ""]);
  }
  return [
    h("h2", { text: "Diff" }),
    h(
      "dl",
      { class: "facts small" },
      h("dt", { text: "from" }),
      h("dd", {}, h("code", { text: short(d.a.id) }), ` ${d.a.message}`),
      h("dt", { text: "to" }),
      h("dd", {}, h("code", { text: short(d.b.id) }), ` ${d.b.message}`),
    ),
    rows.length
      ? h(
          "table",
          { class: "diff-table" },
          h("thead", {}, h("tr", {}, ["", "from", "to", "change"].map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((t, i) => (i === 0 ? h("th", { scope: "row", text: t }) : h("td", { text: String(t) })))))),
        )
      : h("p", { class: "muted", text: "(no differences)" }),
  ];
}

function timeline(log) {
  const moves = [...(log.ref_moves || [])].sort((a, b) => b.seq - a.seq);
  if (!moves.length) return h("p", { class: "muted", text: "No ref has moved yet." });
  return h(
    "ol",
    { class: "timeline", "data-testid": "timeline" },
    moves.map((m) =>
      h(
        "li",
        {},
        h("span", { class: "when" }, timeEl(m.at)),
        h(
          "span",
          { class: "what" },
          h("span", { class: `chip chip-${m.kind === "alias" ? "alias" : "branch"}`, text: `${m.kind === "alias" ? "@" : ""}${m.name}` }),
          " ",
          h("code", { text: short(m.old) }),
          " → ",
          h("code", { text: short(m.new) }),
        ),
        h("span", { class: "who small", text: `${m.cause} by ${m.actor}` }),
        m.reason ? h("span", { class: "reason small", text: `reason: ${m.reason}` }) : null,
      ),
    ),
  );
}

// The model's event times: the steps of the time control (one per distinct time), from
// its creation (the refs answer's created_at) on.
function eventTimes(log, createdAt) {
  const times = new Set(Number.isFinite(createdAt) ? [createdAt] : []);
  for (const c of log.commits || []) times.add(c.at);
  for (const m of log.ref_moves || []) times.add(m.at);
  for (const e of log.traffic_events || []) times.add(e.at);
  return [...times].filter((t) => Number.isFinite(t)).sort((a, b) => a - b);
}

// -- history: the page -----------------------------------------------------------------
function actionButton(testid, label, needed, onclick, extraNote) {
  const allowed = hasRole(needed);
  const blocked = !allowed ? `needs ${needed}` : extraNote;
  return h(
    "button",
    { type: "button", "data-testid": testid, disabled: Boolean(blocked), onclick },
    label,
    blocked ? h("span", { class: "needs", text: ` (${blocked})` }) : null,
  );
}

async function renderHistory(where, view) {
  const model = where.model;
  const asOfRaw = where.params.get("as_of");
  const asOf = asOfRaw !== null && /^\d{1,16}$/.test(asOfRaw) ? Number(asOfRaw) : null;
  main().replaceChildren(pageHeading(`${model}`, "Loading history…"));
  const hv = { model, asOf, picks: new Set(), selected: null, log: null, refs: null, rules: [] };

  const head = h("div", { class: "page-head" });
  const timeControl = h("div", { class: "card as-of" });
  const toolbar = h("div", { class: "toolbar" });
  const problem = h("div", { class: "slot" });
  const picks = h("ol", { class: "picks", "aria-label": "commits to compare" });
  const graphBox = h("div", { class: "graph-box" });
  const detail = h("section", { class: "card detail", "data-testid": "commit-detail", "aria-live": "polite", "aria-label": "commit details" });
  const diffOpen = h("button", { type: "button", "data-testid": "diff-open", disabled: true, text: "Compare 2 commits" });
  const diffHint = h("span", { class: "muted small", text: "Tick two commits to compare them." });
  const diffBox = h("section", { class: "card diff", "data-testid": "diff", "aria-live": "polite", "aria-label": "diff" }, h("h2", { text: "Diff" }), h("p", { class: "muted small" }, diffHint));
  const timelineBox = h("section", { class: "card" }, h("h2", { text: "Ref history" }));

  const selectCommit = (id, focus = false) => {
    const c = (hv.log.commits || []).find((x) => x.id === id);
    if (!c) return;
    hv.selected = id;
    for (const g of graphBox.querySelectorAll("[data-testid=commit][aria-pressed=true]")) g.setAttribute("aria-pressed", "false");
    const g = graphBox.querySelector(`[data-testid=commit][data-commit="${CSS.escape(id)}"]`);
    if (g) {
      g.setAttribute("aria-pressed", "true");
      if (focus) g.focus();
    }
    detail.replaceChildren(...commitDetail(c, trafficLabels(hv.log), selectCommit).filter(Boolean));
    detail.parentElement?.scrollTo?.({ top: 0 }); // the sticky side panel shows the new commit's top
  };

  const updateDiffButton = () => {
    diffOpen.disabled = hv.picks.size !== 2;
    diffHint.textContent = hv.picks.size === 2 ? "" : `Tick two commits to compare them (${hv.picks.size} ticked).`;
  };

  diffOpen.addEventListener("click", async () => {
    const ids = [...hv.picks];
    if (ids.length !== 2) return;
    // Older first, so that the diff reads as what changed since.
    const order = new Map((hv.log.commits || []).map((c, i) => [c.id, i]));
    ids.sort((a, b) => (order.get(b) ?? 0) - (order.get(a) ?? 0));
    diffBox.replaceChildren(h("h2", { text: "Diff" }), h("p", { class: "muted", text: "Comparing…" }));
    try {
      const d = await api(modelPath(model, `/diff?a=${enc(ids[0])}&b=${enc(ids[1])}`));
      if (!current(view)) return;
      diffBox.replaceChildren(...diffView(d));
      diffBox.scrollIntoView({ block: "nearest" });
    } catch (error) {
      diffBox.replaceChildren(h("h2", { text: "Diff" }), errorBox(error.message));
    }
  });

  picks.addEventListener("change", (event) => {
    const box = event.target;
    if (box.dataset.testid !== "diff-pick") return;
    if (box.checked) hv.picks.add(box.value);
    else hv.picks.delete(box.value);
    updateDiffButton();
  });

  graphBox.addEventListener("click", (event) => {
    const g = event.target.closest("[data-testid=commit]");
    if (!g) return;
    selectCommit(g.dataset.commit);
    if (window.matchMedia("(max-width: 900px)").matches) detail.scrollIntoView({ block: "nearest" });
  });
  graphBox.addEventListener("keydown", (event) => {
    const g = event.target.closest("[data-testid=commit]");
    if (!g) return;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      selectCommit(g.dataset.commit);
      return;
    }
    const all = [...graphBox.querySelectorAll("[data-testid=commit]")];
    const at = all.indexOf(g);
    const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: all.length - 1 }[event.key];
    if (to !== undefined && all[to]) {
      event.preventDefault();
      all[to].focus();
    }
  });

  const draw = () => {
    const log = hv.log;
    const { svg, picks: pickRows } = drawGraph(log, hv);
    hv.picks = new Set([...hv.picks].filter((id) => (log.commits || []).some((c) => c.id === id)));
    picks.replaceChildren(pickRows);
    if ((log.commits || []).length) graphBox.replaceChildren(svg);
    else graphBox.replaceChildren(h("p", { class: "muted", text: hv.asOf ? "No commits yet at that time." : "No commits yet." }));
    picks.hidden = !(log.commits || []).length;
    timelineBox.replaceChildren(h("h2", { text: "Ref history" }), timeline(log));
    updateDiffButton();
    const keep = hv.selected && (log.commits || []).some((c) => c.id === hv.selected);
    const first = (log.commits || [])[0];
    if (keep) selectCommit(hv.selected);
    else if (first) selectCommit(first.id);
    else detail.replaceChildren(h("h2", { text: "Commit" }), h("p", { class: "muted", text: "No commit to show." }));
    drawHead();
    drawToolbar();
  };

  const drawHead = () => {
    const r = hv.refs;
    const branches = Object.entries(r.branches || {});
    const aliases = Object.entries(r.aliases || {});
    head.replaceChildren(
      h("h1", {}, model, h("span", { class: "muted thin", text: " · history" })),
      h(
        "p",
        { class: "chips" },
        refChips(branches, "", "branch"),
        refChips(aliases, "@", "alias"),
        hv.asOf !== null ? h("span", { class: "chip chip-past", text: `as of ${when(hv.asOf)}` }) : null,
      ),
    );
    document.title = `${model} · history · modelvc`;
  };

  const drawToolbar = () => {
    const past = hv.asOf !== null ? "showing the past: return to now to act" : undefined;
    toolbar.replaceChildren(
      actionButton("action-move-alias", "Move alias", "committer", () => moveAliasDialog(hv, reload), past),
      actionButton("action-rollback", "Roll back", "committer", () => rollbackDialog(hv, reload), past),
      h("span", { class: "spacer" }),
      diffOpen,
    );
  };

  // Time control: one step per event time; the newest step is "now" (no as_of).
  const range = h("input", { type: "range", id: "as-of", "data-testid": "as-of", min: 0, max: 0, step: 1, value: 0 });
  const rangeLabel = h("output", { for: "as-of", class: "as-of-label", "data-testid": "as-of-label" });
  const nowButton = h("button", { type: "button", class: "quiet", "data-testid": "as-of-now", text: "Now" });
  let pending = null;
  let wanted = asOf;

  const labelFor = (index) => {
    const times = app.times.get(model) || [];
    return index >= times.length - 1 ? "now" : when(times[index]);
  };
  const showRange = () => {
    const times = app.times.get(model) || [];
    range.max = String(Math.max(0, times.length - 1));
    let index = times.length - 1;
    if (hv.asOf !== null) {
      index = 0;
      times.forEach((t, i) => {
        if (t <= hv.asOf) index = i;
      });
    }
    range.value = String(Math.max(0, index));
    rangeLabel.textContent = hv.asOf === null ? "now" : when(hv.asOf);
    range.setAttribute("aria-valuetext", rangeLabel.textContent);
    range.disabled = times.length < 2;
    nowButton.disabled = hv.asOf === null;
  };

  const goTo = async (ms) => {
    wanted = ms;
    const hash = ms === null ? modelHash(model) : `${modelHash(model)}?as_of=${ms}`;
    history.replaceState(null, "", hash);
    try {
      const [log, refs] = await Promise.all([
        api(modelPath(model, `/log?graph=1${ms === null ? "" : `&as_of=${enc(asOfParam(ms))}`}`)),
        api(modelPath(model, `/refs${ms === null ? "" : `?as_of=${enc(asOfParam(ms))}`}`)),
      ]);
      if (!current(view) || wanted !== ms) return;
      hv.log = log;
      hv.refs = refs;
      hv.asOf = ms;
      problem.replaceChildren();
      draw();
      showRange();
      announce(ms === null ? "Showing the model now." : `Showing the model as of ${when(ms)}.`);
    } catch (error) {
      if (!current(view)) return;
      problem.replaceChildren(errorBox(error.message));
    }
  };

  const chosen = () => {
    const times = app.times.get(model) || [];
    const index = Number(range.value);
    return index >= times.length - 1 ? null : times[index];
  };
  range.addEventListener("input", () => {
    rangeLabel.textContent = labelFor(Number(range.value));
    range.setAttribute("aria-valuetext", rangeLabel.textContent);
    clearTimeout(pending);
    pending = setTimeout(() => goTo(chosen()), 200);
  });
  range.addEventListener("change", () => {
    clearTimeout(pending);
    const ms = chosen();
    if (ms !== wanted) goTo(ms);
  });
  nowButton.addEventListener("click", () => {
    clearTimeout(pending);
    goTo(null);
  });

  timeControl.append(
    h("label", { for: "as-of", class: "as-of-title", text: "Point in time" }),
    range,
    rangeLabel,
    nowButton,
  );

  async function reload(message) {
    const [log, refs] = await Promise.all([api(modelPath(model, "/log?graph=1")), api(modelPath(model, "/refs"))]);
    if (!current(view)) return;
    app.times.set(model, eventTimes(log, refs.created_at));
    hv.log = log;
    hv.refs = refs;
    hv.asOf = null;
    wanted = null;
    history.replaceState(null, "", modelHash(model));
    draw();
    showRange();
    if (message) announce(message);
  }

  // First load: the log as of the URL's time, and (for the steps) the log now.
  const cut = asOf === null ? "" : `&as_of=${enc(asOfParam(asOf))}`;
  const [log, refs, rules, nowLog] = await Promise.all([
    api(modelPath(model, `/log?graph=1${cut}`)),
    api(modelPath(model, `/refs${asOf === null ? "" : `?as_of=${enc(asOfParam(asOf))}`}`)),
    api("/v1/protections").then((a) => a.rules || [], () => []),
    asOf === null ? null : api(modelPath(model, "/log")),
  ]);
  if (!current(view)) return;
  hv.log = log;
  hv.refs = refs;
  hv.rules = rules;
  app.times.set(model, eventTimes(nowLog || log, refs.created_at));

  main().replaceChildren(
    head,
    timeControl,
    problem,
    toolbar,
    h(
      "div",
      { class: "history" },
      h("section", { class: "card graph-card", "aria-label": "commit graph" }, h("div", { class: "graph-wrap" }, picks, graphBox)),
      h("div", { class: "side" }, detail, diffBox),
    ),
    timelineBox,
  );
  draw();
  showRange();
}

// -- actions: the dialog ---------------------------------------------------------------
function field(label, input, hint) {
  const id = input.id || `f-${input.name}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id, text: label }), input, hint ? h("p", { class: "muted small", text: hint }) : null);
}

// Keeps a dialog's expectation on the ref ``input`` names (``now(name)``), and names the
// role a protection rule asks to move it.
function followRef(dlg, input, event, now, note, rules, model, kind) {
  const follow = () => {
    const name = input.value.trim();
    dlg.setExpect(now(name));
    note.textContent = protectionNote(rules, model, kind, name);
  };
  input.addEventListener(event, follow);
  follow();
}

function allowSignatureChange(id) {
  return h(
    "div",
    { class: "field check" },
    h("input", { type: "checkbox", name: "allow_signature_change", id, value: "yes" }),
    h("label", { for: id, text: "Allow a change of the model's inputs (signature)" }),
  );
}

function protectionNote(rules, model, kind, name) {
  let needed = null;
  for (const rule of rules || []) {
    if (rule.kind === kind && rule.name === name && (!rule.model || rule.model === model)) {
      if (needed === null || ROLES.indexOf(rule.role) > ROLES.indexOf(needed)) needed = rule.role;
    }
  }
  return needed && !hasRole(needed) ? `${kind} ${name} is protected: needs ${needed}` : "";
}

// 409s that mean "the state moved since the page showed it": re-read and retry. Other
// 409s (a signature change, a rollout in the way) are shown as errors.
const MOVED = new Set(["conflict", "stale_head", "rollout_moved", "write_raced"]);

// A confirmation dialog. `expected()` says what the page showed (sent as expect),
// `send(values, expect)` performs the write, `reread()` fetches the state again after a
// 409 and returns the new expectation: the user sees it and confirms again (nothing is
// sent on a state they have not seen). The form is never rebuilt, so a retry keeps every
// value the user typed.
function actionDialog({ title, intro, fields, confirm, expected, describe, send, reread, done, check }) {
  document.querySelector("dialog[data-testid=action-dialog]")?.remove();
  // Keyboard users come back to the button that opened the dialog (re-drawn on success).
  const opener = document.activeElement?.dataset?.testid;
  const refocus = () => {
    const back = opener && document.querySelector(`[data-testid="${CSS.escape(opener)}"]`);
    if (back && !back.disabled) back.focus();
  };
  let expect = expected();
  const form = h("form", { method: "dialog", class: "dialog-form" });
  const expectLine = h("p", { class: "expect small" });
  const slot = h("div", { class: "slot", "aria-live": "polite" });
  const confirmButton = h("button", { type: "submit", class: "primary", "data-testid": "confirm", text: confirm });
  const cancelButton = h("button", { type: "button", "data-testid": "cancel", text: "Cancel" });
  const dialog = h("dialog", { "data-testid": "action-dialog", "aria-labelledby": "dialog-title" }, form);
  const showExpect = () => {
    expectLine.textContent = describe(expect);
  };
  form.append(h("h2", { id: "dialog-title", text: title }), intro ? h("p", { class: "muted small", text: intro }) : null, ...fields, expectLine, slot, h("div", { class: "buttons" }, cancelButton, confirmButton));
  showExpect();

  const values = () => Object.fromEntries(new FormData(form).entries());
  const submit = async () => {
    const problem = check ? check(values()) : "";
    if (problem) {
      slot.replaceChildren(errorBox(problem));
      return;
    }
    confirmButton.disabled = true;
    slot.replaceChildren(h("p", { class: "muted small", text: "Sending…" }));
    try {
      const answer = await send(values(), expect);
      dialog.close();
      dialog.remove();
      await done(answer, values());
      refocus();
    } catch (error) {
      confirmButton.disabled = false;
      if (error.status === 409 && MOVED.has(error.code)) {
        slot.replaceChildren(conflictBox(error));
      } else {
        slot.replaceChildren(errorBox(error.message));
      }
    }
  };
  const conflictBox = (error) => {
    const body = error.body;
    const now = "current" in body ? body.current : "step" in body ? `step ${body.step}, ${body.status}` : undefined;
    const retry = h("button", { type: "button", "data-testid": "retry", text: "Retry with the current state" });
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      try {
        expect = await reread(values(), now);
        showExpect();
        slot.replaceChildren(h("p", { class: "note small", text: "Read the current state again: check it above, then confirm." }));
        confirmButton.focus();
      } catch (reason) {
        slot.replaceChildren(errorBox(reason.message));
      }
    });
    return h(
      "div",
      { class: "conflict", "data-testid": "conflict", role: "alert" },
      h("p", { class: "strong", text: "Someone changed this while the dialog was open." }),
      h("p", { text: error.message }),
      now !== undefined ? h("p", {}, "Now: ", h("code", { class: "wrap", text: now === null ? "nothing" : typeof now === "object" ? JSON.stringify(now) : String(now) })) : null,
      h("div", { class: "buttons" }, retry),
    );
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    submit();
  });
  cancelButton.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    dialog.remove();
    refocus();
  });
  document.body.append(dialog);
  dialog.showModal();
  const first = form.querySelector("input:not([type=hidden]), select, textarea");
  if (first) first.focus();
  return { dialog, form, showExpect, setExpect: (value) => { expect = value; showExpect(); } };
}

function moveAliasDialog(hv, reload) {
  const aliases = Object.keys(hv.refs.aliases || {});
  const startAlias = aliases.includes("production") ? "production" : aliases[0] || "production";
  const list = h("datalist", { id: "alias-names" }, aliases.map((a) => h("option", { value: a })));
  const alias = h("input", { name: "alias", id: "f-alias", required: true, list: "alias-names", value: startAlias, autocomplete: "off" });
  const ref = h("input", { name: "to", id: "f-ref", required: true, value: hv.selected || "main", autocomplete: "off" });
  const note = h("p", { class: "muted small note-slot", "aria-live": "polite" });
  let known = hv.refs; // re-read after a conflict
  const aliasNow = (name) => (known.aliases || {})[name] ?? null;
  const dlg = actionDialog({
    title: "Move an alias",
    intro: "Point an alias at another commit. Workers serving it switch without a restart.",
    fields: [
      list,
      field("Alias", alias),
      note,
      field("To (a commit, branch or alias)", ref),
      allowSignatureChange("f-allow"),
    ],
    confirm: "Move alias",
    expected: () => aliasNow(alias.value.trim()),
    describe: (expect) => `Expecting @${alias.value.trim()} to point at ${expect ? short(expect) : "nothing (a new alias)"}, as shown.`,
    send: (v, expect) =>
      api(modelPath(hv.model, `/aliases/${enc(v.alias.trim())}`), {
        method: "PUT",
        body: { ref: v.to.trim(), expect: expect ?? "none", allow_signature_change: v.allow_signature_change === "yes" },
      }),
    reread: async (v) => {
      known = await api(modelPath(hv.model, "/refs"));
      return aliasNow(v.alias.trim());
    },
    done: (_, v) => reload(`Moved @${v.alias.trim()} to ${v.to.trim()}.`),
  });
  followRef(dlg, alias, "input", aliasNow, note, hv.rules, hv.model, "alias");
}

function rollbackDialog(hv, reload) {
  const branches = Object.keys(hv.refs.branches || {});
  const start = branches.includes(hv.refs.default_branch) ? hv.refs.default_branch : branches[0] || "main";
  const branch = h("select", { name: "branch", id: "f-branch", required: true }, branches.map((b) => h("option", { value: b, selected: b === start, text: b })));
  const target = h("input", { name: "to", id: "f-to", required: true, value: hv.selected && hv.selected !== hv.refs.branches[start] ? hv.selected : `${start}~1`, autocomplete: "off" });
  const reason = h("input", { name: "reason", id: "f-reason", required: true, maxlength: 1000, autocomplete: "off", placeholder: "e.g. latency regression" });
  const note = h("p", { class: "muted small note-slot", "aria-live": "polite" });
  let known = hv.refs; // re-read after a conflict
  const headOf = (name) => (known.branches || {})[name] ?? null;
  const dlg = actionDialog({
    title: "Roll back a branch",
    intro: "Move a branch back along its first-parent history. History stays: this is a new event.",
    fields: [field("Branch", branch), note, field("To (an older commit of the branch)", target), field("Reason (required, kept in the log)", reason)],
    confirm: "Roll back",
    expected: () => headOf(branch.value),
    describe: (expect) => `Expecting ${branch.value} at ${short(expect)}, as shown.`,
    check: (v) => (v.reason.trim() ? "" : "Give a reason: it is kept in the log."),
    send: (v, expect) =>
      api(modelPath(hv.model, "/rollbacks"), {
        method: "POST",
        body: { branch: v.branch, to: v.to.trim(), reason: v.reason.trim(), expect },
      }),
    reread: async (v) => {
      known = await api(modelPath(hv.model, "/refs"));
      return headOf(v.branch);
    },
    done: (_, v) => reload(`Rolled ${v.branch} back to ${v.to.trim()}.`),
  });
  followRef(dlg, branch, "change", headOf, note, hv.rules, hv.model, "branch");
}

// -- serving ---------------------------------------------------------------------------
const CHARTS = [
  ["throughput", "Throughput", (w) => w.throughput, (v) => `${figure(v, 3)}/s`],
  ["p50_ms", "p50 latency", (w) => w.p50_ms, (v) => `${figure(v, 3)} ms`],
  ["p99_ms", "p99 latency", (w) => w.p99_ms, (v) => `${figure(v, 3)} ms`],
  ["dead_letter_rate", "Dead-letter rate", (w) => w.dead_letter_rate, percent],
  ["metric", "Online metric", null, (v) => figure(v, 4)],
  ["coverage", "Label coverage", (w) => w.coverage, percent],
  ["psi", "Drift (largest PSI)", (w) => maxPsi(w.psi), (v) => figure(v, 3)],
];

function maxPsi(psi) {
  if (!psi || typeof psi !== "object") return null;
  const values = Object.values(psi).filter((v) => typeof v === "number" && Number.isFinite(v));
  return values.length ? Math.max(...values) : null;
}

// The online metric of a version: logloss for a binary model, else MAE (the CLI's quality).
function onlineMetric(version) {
  const all = [version.cumulative || {}, ...(version.windows || [])];
  if (all.some((w) => typeof w.logloss === "number")) return ["logloss", (w) => w.logloss];
  if (all.some((w) => typeof w.mae === "number")) return ["MAE", (w) => w.mae];
  return ["no labels yet", () => null];
}

function versionKey(v) {
  return JSON.stringify([v.ref, v.commit_id, v.rollout_id, v.arm, v.shadow]);
}

function servesText(v) {
  if (v.shadow) return "shadow";
  if (v.rollout_id) return `${v.arm || "?"} arm of rollout ${v.rollout_id}`;
  return "all traffic";
}

const CHART_W = 300;
const CHART_H = 80;

function chartCard(version, metric, title, read, format, idPrefix) {
  const titleId = `${idPrefix}-${metric}`;
  const line = s("polyline", { class: "line", points: "", "vector-effect": "non-scaling-stroke" });
  const dot = s("circle", { class: "dot", r: 3, cx: -10, cy: -10 });
  const svg = s(
    "svg",
    {
      "data-testid": "chart",
      "data-metric": metric,
      "data-points": "0",
      "data-last": "",
      viewBox: `0 0 ${CHART_W} ${CHART_H}`,
      preserveAspectRatio: "none",
      class: "chart",
      role: "img",
      "aria-labelledby": titleId,
    },
    s("title", { id: titleId, text: `${title} of ${short(version.commit_id)} per window` }),
    s("line", { class: "grid", x1: 0, y1: CHART_H - 1, x2: CHART_W, y2: CHART_H - 1 }),
    s("line", { class: "grid", x1: 0, y1: CHART_H / 2, x2: CHART_W, y2: CHART_H / 2 }),
    line,
    dot,
  );
  const heading = h("h3", { class: "chart-title", text: title });
  const big = h("span", { class: "big" });
  const context = h("span", { class: "muted small" });
  const value = h("p", { class: "chart-figure", "data-testid": "chart-figure" }, big, " ", context);
  const scale = h("p", { class: "chart-scale muted small", "aria-hidden": "true" });
  const card = h("div", { class: "chart-card" }, heading, svg, value, scale);
  return {
    card,
    update(v) {
      let reader = read;
      let name = title;
      if (metric === "metric") {
        const [label, pick] = onlineMetric(v);
        reader = pick;
        name = `Online metric (${label})`;
        heading.textContent = name;
      }
      const windows = v.windows || [];
      const points = [];
      for (const w of windows) {
        const y = reader(w);
        const t = Number(w.end_ms);
        if (typeof y === "number" && Number.isFinite(y) && Number.isFinite(t)) points.push([t, y]);
      }
      const last = points.length ? points[points.length - 1][1] : null;
      svg.setAttribute("data-points", String(points.length));
      svg.setAttribute("data-last", last === null ? "" : String(last));
      if (!points.length) {
        line.setAttribute("points", "");
        dot.setAttribute("cx", "-10");
        big.textContent = "no data yet";
        context.textContent = "";
        scale.textContent = "";
        return;
      }
      const t0 = points[0][0];
      const t1 = points[points.length - 1][0];
      const top = Math.max(...points.map(([, y]) => y));
      const yMax = top > 0 ? top * 1.15 : 1;
      const xOf = (t) => (t1 === t0 ? CHART_W / 2 : ((t - t0) / (t1 - t0)) * (CHART_W - 8) + 4);
      const yOf = (y) => CHART_H - 4 - (Math.max(0, y) / yMax) * (CHART_H - 8);
      line.setAttribute("points", points.map(([t, y]) => `${xOf(t).toFixed(1)},${yOf(y).toFixed(1)}`).join(" "));
      dot.setAttribute("cx", xOf(t1).toFixed(1));
      dot.setAttribute("cy", yOf(last).toFixed(1));
      big.textContent = format(last);
      context.textContent = `newest of ${points.length} window${points.length === 1 ? "" : "s"}`;
      scale.textContent = `max ${format(top)} · ${when(t0).slice(11, 19)}–${when(t1).slice(11, 19)} UTC`;
    },
  };
}

function versionSection(v, index) {
  const charts = CHARTS.map(([metric, title, read, format]) => chartCard(v, metric, title, read, format, `chart-${index}`));
  const summary = h("p", { class: "muted small" });
  const section = h(
    "section",
    { class: "card version", "data-testid": "version", "data-commit": v.commit_id, "data-ref": v.ref, "aria-label": `version ${short(v.commit_id)} for ${v.ref}` },
    h(
      "div",
      { class: "version-head" },
      h("h2", {}, h("span", { class: "chip chip-branch", text: v.ref }), " ", h("code", { text: short(v.commit_id) })),
      h("span", { class: "muted", text: servesText(v) }),
    ),
    summary,
    h("div", { class: "charts" }, charts.map((c) => c.card)),
  );
  return {
    section,
    update(fresh) {
      const cum = fresh.cumulative || {};
      summary.textContent = `${figure(cum.count)} predictions, ${percent(cum.coverage)} labelled, over ${figure(fresh.windows_total)} window(s)`;
      for (const c of charts) c.update(fresh);
    },
  };
}

async function renderServing(where, view) {
  const model = where.model;
  document.title = `${model} · serving · modelvc`;
  const list = h("div", { class: "versions" });
  const note = h("p", { class: "muted small note-slot", "aria-live": "polite" });
  const problem = h("div", { class: "slot" });
  main().replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, model, h("span", { class: "muted thin", text: " · serving" })), h("p", { class: "muted", text: `Each version's figures per monitor window, refreshed every ${POLL_MS / 1000} s.` })),
    problem,
    note,
    list,
  );
  const shown = new Map();
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden || !current(view)) return;
    busy = true;
    try {
      const answer = await api(modelPath(model, `/monitor?last=${MONITOR_WINDOWS}`));
      if (!current(view)) return;
      problem.replaceChildren();
      const versions = answer.versions || [];
      const seen = new Set();
      versions.forEach((v) => {
        const key = versionKey(v);
        seen.add(key);
        let entry = shown.get(key);
        if (!entry) {
          entry = versionSection(v, shown.size);
          shown.set(key, entry);
          list.append(entry.section);
        }
        entry.update(v);
      });
      for (const [key, entry] of shown) {
        if (!seen.has(key)) {
          entry.section.remove();
          shown.delete(key);
        }
      }
      note.textContent = versions.length
        ? `Windows of ${figure((answer.window_ms || 0) / 1000)} s; last refreshed ${when(Date.now()).slice(11)}.`
        : "No predictions yet for this model: publish features (`modelvc publish features.csv`) and its versions appear here.";
    } catch (error) {
      if (current(view) && error.status !== 401) problem.replaceChildren(errorBox(error.message));
    } finally {
      busy = false;
    }
  };
  await tick();
  if (current(view)) app.timer = { id: setInterval(tick, POLL_MS), tick };
}

// -- rollouts --------------------------------------------------------------------------
const STEP_MARKS = { running: "in progress", paused: "paused", aborted: "aborted" };

function stepsList(r) {
  return h(
    "ol",
    { class: "steps", "aria-label": "steps" },
    (r.policy?.steps || []).map((p, i) => {
      const done = r.status === "completed" || i < r.step;
      const here = !done && i === r.step;
      const state = done ? "done" : here ? STEP_MARKS[r.status] || r.status : "to come";
      return h("li", { class: `step${done ? " done" : ""}${here ? " here" : ""}` }, h("span", { class: "pct", text: `${p}%` }), h("span", { class: "small", text: state }));
    }),
  );
}

function policyText(p) {
  if (!p) return "";
  const parts = [`min ${figure(p.min_labels)} labels a step`];
  for (const [m, limit] of Object.entries(p.max_regression || {})) parts.push(`${m} worse by at most ${figure(limit)}`);
  if (p.max_p99_ms !== null && p.max_p99_ms !== undefined) parts.push(`p99 ≤ ${figure(p.max_p99_ms)} ms`);
  if (p.max_dead_letter_rate !== null && p.max_dead_letter_rate !== undefined) parts.push(`dead-letter rate ≤ ${figure(p.max_dead_letter_rate)}`);
  parts.push(p.step_timeout_ms ? `step timeout ${figure(p.step_timeout_ms / 60000)} min` : "no step timeout");
  return parts.join("; ");
}

function decisionWhat(d) {
  switch (d.type) {
    case "RolloutStarted":
      return `started at ${(d.steps || [])[0] ?? "?"}%`;
    case "RolloutAdvanced":
      return d.completed ? "completed at 100%" : `advanced to ${d.percent}%`;
    case "RolloutAborted":
      return `aborted at step ${d.step}: ${d.reason ?? ""}`;
    case "RolloutPaused":
      return `paused: ${d.reason ?? ""}`;
    case "RolloutResumed":
      return "resumed";
    default:
      return String(d.type);
  }
}

// The figures a decision compared: evidence comes from the log, so any shape is shown
// without failing (the CLI's _evidence_lines).
function evidenceView(evidence) {
  if (evidence === null || evidence === undefined) return null;
  if (typeof evidence !== "object") return h("p", { class: "small", text: `evidence: ${String(evidence).slice(0, 200)}` });
  if (evidence.manual) return h("p", { class: "small", text: `manual, by ${evidence.by ?? "?"}${evidence.reason ? `: ${evidence.reason}` : ""}` });
  if ("unparsed" in evidence) return h("p", { class: "small", text: `evidence (not JSON): ${String(evidence.unparsed).slice(0, 200)}` });
  const arms = ["baseline", "candidate"]
    .filter((arm) => evidence[arm] && typeof evidence[arm] === "object")
    .map((arm) => {
      const f = evidence[arm];
      const windows = Array.isArray(f.windows) ? f.windows.length : "?";
      return h("li", { text: `${arm}: ${figure(f.predictions)} predictions, ${figure(f.labeled)} labelled, ${windows} window(s)` });
    });
  const criteria = Array.isArray(evidence.criteria) ? evidence.criteria.filter((c) => c && typeof c === "object") : [];
  return h(
    "div",
    { class: "evidence" },
    arms.length ? h("ul", { class: "small" }, arms) : null,
    criteria.length
      ? h(
          "table",
          { class: "criteria" },
          h("caption", { text: "evidence" }),
          h("thead", {}, h("tr", {}, ["limit", "baseline", "candidate", "allowed", "held"].map((t) => h("th", { scope: "col", text: t })))),
          h(
            "tbody",
            {},
            criteria.map((c) =>
              h(
                "tr",
                { class: c.ok ? "ok" : "failed" },
                h("th", { scope: "row", text: String(c.name ?? "?") }),
                h("td", { text: figure(c.baseline, 6) }),
                h("td", { text: figure(c.candidate, 6) }),
                h("td", { text: figure(c.limit, 6) }),
                h("td", { class: c.ok ? "held" : "broke", text: c.ok ? "held" : "FAILED" }),
              ),
            ),
          ),
        )
      : null,
  );
}

function rolloutCard(r, decisions, onAbort) {
  const active = r.status === "running" || r.status === "paused";
  return h(
    "section",
    { class: "card rollout", "data-testid": "rollout", "data-rollout": r.id, "aria-label": `rollout ${r.id}` },
    h(
      "div",
      { class: "version-head" },
      h("h2", {}, `Rollout `, h("code", { text: r.id }), " of ", h("span", { class: "chip chip-alias", text: `@${r.alias}` })),
      h("span", { class: `badge badge-${r.status}`, "data-testid": "rollout-status", text: r.status }),
    ),
    r.reason ? h("p", { class: "small", text: `reason: ${r.reason}` }) : null,
    stepsList(r),
    h(
      "dl",
      { class: "facts arms" },
      h("dt", { text: "baseline" }),
      h("dd", {}, h("code", { text: short(r.baseline) }), ` serves ${100 - r.percent}% of entities`),
      h("dt", { text: "candidate" }),
      h("dd", {}, h("code", { text: short(r.candidate) }), ` serves ${r.percent}% of entities`),
      h("dt", { text: "policy" }),
      h("dd", { class: "small", text: policyText(r.policy) }),
      h("dt", { text: "started" }),
      h("dd", {}, timeEl(r.started_at), "; this step since ", timeEl(r.step_started_at)),
    ),
    active ? h("div", { class: "toolbar" }, actionButton("action-abort-rollout", "Abort rollout", "committer", () => onAbort(r))) : null,
    h("h3", { text: "Decisions" }),
    decisions === null
      ? h("p", { class: "muted small", text: "Decisions of older rollouts are not loaded here; `modelvc rollout status ID` shows them." })
      : decisions.length
        ? h(
            "ol",
            { class: "decisions" },
            decisions.map((d) =>
              h(
                "li",
                { "data-testid": "decision" },
                h("p", {}, h("span", { class: "strong", text: decisionWhat(d) }), h("span", { class: "muted small", text: ` · #${d.seq}${d.step === undefined ? "" : ` · step ${d.step}`} · by ${d.actor} · ` }), timeEl(d.at)),
                evidenceView(d.evidence),
              ),
            ),
          )
        : h("p", { class: "muted small", text: "No decision yet." }),
  );
}

function parseRegressions(text) {
  const out = {};
  for (const item of text.split(",").map((x) => x.trim()).filter(Boolean)) {
    const [name, value] = item.split("=");
    if (!name || value === undefined || !Number.isFinite(Number(value))) throw new Error(`max regression ${item}: write METRIC=DELTA, e.g. logloss=0.05`);
    out[name.trim()] = Number(value);
  }
  return out;
}

function startRolloutDialog(model, refs, rules, reload) {
  const aliases = Object.keys(refs.aliases || {});
  const list = h("datalist", { id: "rollout-aliases" }, aliases.map((a) => h("option", { value: a })));
  const alias = h("input", { name: "alias", id: "f-ralias", required: true, list: "rollout-aliases", value: aliases.includes("production") ? "production" : aliases[0] || "", autocomplete: "off" });
  const to = h("input", { name: "to", id: "f-rto", required: true, autocomplete: "off", placeholder: "a commit, branch or alias" });
  const steps = h("input", { name: "steps", id: "f-steps", value: "10,50,100", autocomplete: "off", pattern: "\\s*\\d{1,3}(\\s*,\\s*\\d{1,3})*\\s*" });
  const minLabels = h("input", { name: "min_labels", id: "f-min-labels", type: "number", min: 0, step: 1, inputmode: "numeric" });
  const regression = h("input", { name: "max_regression", id: "f-regression", autocomplete: "off", value: "logloss=0.05" });
  const p99 = h("input", { name: "max_p99_ms", id: "f-p99", type: "number", min: 0, step: "any" });
  const note = h("p", { class: "muted small note-slot", "aria-live": "polite" });
  let known = refs;
  const servesNow = (name) => (known.aliases || {})[name] ?? null;
  const dlg = actionDialog({
    title: "Start a canary rollout",
    intro: "Move an alias to a new commit in steps; the monitor's figures decide each step.",
    fields: [
      list,
      field("Alias", alias),
      note,
      field("Candidate (to)", to),
      field("Steps (% of entities)", steps),
      field("Minimum labels a step", minLabels, "blank: the service's default"),
      field("Largest regression allowed", regression, "METRIC=DELTA, comma separated (blank: none)"),
      field("Largest p99 latency (ms)", p99, "blank: no limit"),
      allowSignatureChange("f-rallow"),
    ],
    confirm: "Start rollout",
    expected: () => servesNow(alias.value.trim()),
    describe: (expect) => `Expecting @${alias.value.trim()} to serve ${expect ? short(expect) : "nothing yet"}, as shown.`,
    send: (v, expect) => {
      const body = {
        alias: v.alias.trim(),
        to: v.to.trim(),
        steps: v.steps.split(",").map((x) => Number(x.trim())).filter((x) => Number.isFinite(x) && x > 0),
        max_regression: parseRegressions(v.max_regression || ""),
        allow_signature_change: v.allow_signature_change === "yes",
        expect: expect ?? "none",
      };
      if (v.min_labels !== "") body.min_labels = Number(v.min_labels);
      if (v.max_p99_ms !== "") body.max_p99_ms = Number(v.max_p99_ms);
      return api(modelPath(model, "/rollouts"), { method: "POST", body });
    },
    reread: async (v) => {
      known = await api(modelPath(model, "/refs"));
      return servesNow(v.alias.trim());
    },
    done: (answer, v) => reload(`Started rollout ${answer?.rollout?.id ?? ""} of @${v.alias.trim()}.`),
  });
  followRef(dlg, alias, "input", servesNow, note, rules, model, "alias");
}

function abortRolloutDialog(model, r, reload) {
  const reason = h("input", { name: "reason", id: "f-abort-reason", required: true, maxlength: 1000, autocomplete: "off" });
  let step = r.step;
  actionDialog({
    title: `Abort rollout ${r.id}`,
    intro: `@${r.alias} goes back to serving ${short(r.baseline)} for every entity.`,
    fields: [field("Reason (required, kept in the log)", reason)],
    confirm: "Abort rollout",
    expected: () => step,
    describe: (expect) => `Expecting the rollout at step ${expect} (${(r.policy?.steps || [])[expect] ?? "?"}%), as shown.`,
    check: (v) => (v.reason.trim() ? "" : "Give a reason: it is kept in the log."),
    send: (v, expect) =>
      api(modelPath(model, `/rollouts/${enc(r.id)}/abort`), { method: "POST", body: { reason: v.reason.trim(), expect_step: expect } }),
    reread: async () => {
      const fresh = await api(modelPath(model, `/rollouts/${enc(r.id)}`));
      step = fresh.step;
      return step;
    },
    done: () => reload(`Aborted rollout ${r.id}.`),
  });
}

async function renderRollouts(where, view) {
  const model = where.model;
  document.title = `${model} · rollouts · modelvc`;
  main().replaceChildren(pageHeading(model, "Loading rollouts…"));
  const load = async () => {
    const [answer, refs, rules] = await Promise.all([
      api(modelPath(model, "/rollouts")),
      api(modelPath(model, "/refs")),
      api("/v1/protections").then((a) => a.rules || [], () => []),
    ]);
    const rollouts = [...(answer.rollouts || [])].reverse(); // newest first
    const details = await Promise.all(
      rollouts.map((r, i) => (i < MAX_DECISION_FETCHES ? api(modelPath(model, `/rollouts/${enc(r.id)}`)).then((d) => d.decisions || []) : null)),
    );
    return { rollouts, details, refs, rules };
  };
  const draw = ({ rollouts, details, refs, rules }) => {
    const reload = async (message) => {
      const fresh = await load();
      if (!current(view)) return;
      draw(fresh);
      if (message) announce(message);
    };
    main().replaceChildren(
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, model, h("span", { class: "muted thin", text: " · rollouts" })),
        h("p", { class: "muted", text: "Canary rollouts: their steps, arms, and the evidence behind every decision." }),
      ),
      h("div", { class: "toolbar" }, actionButton("action-start-rollout", "Start a rollout", "committer", () => startRolloutDialog(model, refs, rules, reload))),
      rollouts.length
        ? h("div", { class: "rollouts" }, rollouts.map((r, i) => rolloutCard(r, details[i], (one) => abortRolloutDialog(model, one, reload))))
        : h(
            "div",
            { class: "card empty" },
            h("p", {}, "No rollouts yet. Start one here or with ", h("code", { text: "modelvc rollout start production --to REF" }), "."),
          ),
    );
  };
  const loaded = await load();
  if (current(view)) draw(loaded);
}

// -- audit -----------------------------------------------------------------------------
async function renderAudit(where, view) {
  main().replaceChildren(pageHeading("Audit", "Loading the state digest…"));
  const live = await api("/v1/state/digest");
  if (!current(view)) return;
  const result = h("div", { class: "slot", "aria-live": "polite" });
  const run = h("button", { type: "button", class: "primary", "data-testid": "replay-run", text: "Run a replay check" });
  run.addEventListener("click", async () => {
    run.disabled = true;
    result.replaceChildren(h("p", { class: "muted", text: "Replaying the event log from offset 0…" }));
    try {
      const r = await api("/v1/audit/replay", { method: "POST", body: {} });
      if (!current(view)) return;
      result.replaceChildren(replayResult(r));
    } catch (error) {
      if (current(view)) result.replaceChildren(errorBox(error.message));
    } finally {
      run.disabled = false;
    }
  });
  main().replaceChildren(
    pageHeading("Audit", "The service's state digest, and a replay of the whole log that must arrive at the same one."),
    h(
      "section",
      { class: "card" },
      h("h2", { text: "Live state digest" }),
      h("p", {}, h("code", { class: "wrap digest", "data-testid": "digest", text: live.digest })),
      h("p", { class: "muted small", text: `${figure(live.models)} models; next event offset by partition ${Object.entries(live.offsets || {}).map(([p, o]) => `${p}: ${o}`).join(", ")}; ${figure(live.void_events)} void events` }),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", { text: "Replay check" }),
      h("p", { class: "muted small" }, "Reads ", h("code", { text: "modelvc.events" }), " from offset 0 on the server, checks every model's chain and signatures, and compares the replayed digest with the live one (the CLI: ", h("code", { text: "modelvc audit replay" }), ")."),
      h("div", { class: "buttons start" }, run),
      result,
    ),
  );
}

function replayResult(r) {
  const clean = Boolean(r.clean);
  const violations = Array.isArray(r.violations) ? r.violations : [];
  return h(
    "div",
    { class: `replay ${clean ? "clean" : "dirty"}`, "data-testid": "replay-result", "data-clean": String(clean) },
    h("p", { class: "strong", text: clean ? "Clean: every chain holds." : `Not clean: ${figure(r.violation_count)} violation(s).` }),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "events" }),
      h("dd", { text: figure(r.events) }),
      h("dt", { text: "models" }),
      h("dd", { text: figure(r.models) }),
      h("dt", { text: "violations" }),
      h("dd", { text: figure(r.violation_count) }),
      h("dt", { text: "replayed digest" }),
      h("dd", {}, h("code", { class: "wrap", text: String(r.digest) })),
      h("dt", { text: "live digest" }),
      h("dd", {}, h("code", { class: "wrap", text: String(r.live_digest) })),
      h("dt", { text: "digests" }),
      h("dd", { class: r.matches ? "held" : "broke", text: r.matches ? "match" : "DIFFER" }),
      h("dt", { text: "took" }),
      h("dd", { text: `${figure(r.took_ms)} ms` }),
    ),
    violations.length
      ? h(
          "ul",
          { class: "violations small" },
          violations.map((v) => h("li", { text: `${v.kind ?? "?"} ${v.model ?? "?"}#${v.seq ?? "?"} ${v.topic ?? ""}[${v.partition ?? ""}]@${v.offset ?? ""} ${v.detail ?? ""}` })),
        )
      : null,
  );
}

boot();
