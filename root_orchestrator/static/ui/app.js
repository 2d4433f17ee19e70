/* Edge orchestrator dashboard: plain JavaScript, no build step, no dependencies.
 *
 * - API data is rendered with text nodes and textContent only, never innerHTML.
 * - The operator token lives in sessionStorage (this tab) and travels as a bearer
 *   header, on the event stream too: the stream is read with fetch() and a stream
 *   reader, because EventSource cannot send headers (and a token in a URL would end
 *   up in access logs).
 * - A 401 anywhere sends the user back to the login form with a message.
 * - The event stream reconnects after a drop and resumes after the last seq it saw.
 */
(() => {
  "use strict";

  const TOKEN_KEY = "edge.operatorToken";
  const API = new URL("../api/v1/", document.baseURI);
  const POLL_MS = 5000; // views refresh on events, and at least this often
  const EVENT_REFRESH_GAP_MS = 1000; // event-driven refreshes at most once a second
  const MAX_EVENTS = 200; // rows kept in the live events panel
  const RECENT_EVENTS = 50; // history shown on login
  const STREAM_IDLE_MS = 45000; // the root sends a keep-alive every 15 s
  const JOB_STATES = [
    "PENDING", "RUNNING", "DEGRADED", "SUCCEEDED", "FAILED", "STOPPED", "TERMINATING",
    "TERMINATED",
  ];

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  const state = {
    token: null,
    view: null, // {root, refresh(), alive}
    pollTimer: null,
    refreshTimer: null,
    refreshing: false,
    refreshAgain: false,
    refreshedAt: 0, // performance.now() of the last refresh
    streamGen: 0,
    streamAbort: null,
    lastSeq: null,
    jobNames: new Map(), // job id -> name, for the events panel
    clusterNames: new Map(), // cluster id -> name, for placement scores
    expired: false,
  };

  // ------------------------------------------------------------------ DOM helpers

  /** Element with properties and children; strings become text nodes (never HTML). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    return appendAll(el, children);
  }

  /** Append children (nested arrays flattened, null/false skipped) as nodes or text. */
  function appendAll(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Replace an element's children. */
  const fill = (el, ...children) => appendAll((el.replaceChildren(), el), children);

  /** A state badge; the CSS class is derived from the state but stripped to [a-z_]. */
  function badge(text, extra) {
    const cls = String(text).toLowerCase().replace(/[^a-z_]/g, "");
    return h("span", { class: `badge st-${cls}${extra ? " " + extra : ""}`, text });
  }

  function table(headers, rows, cls) {
    return h("table", { class: cls || "grid" },
      h("thead", null, h("tr", null, headers.map((t) => h("th", { text: t })))),
      h("tbody", null, rows));
  }

  const dash = "\u2013";
  const now = () => Date.now() / 1000;

  function ago(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return dash;
    const s = Math.max(0, seconds);
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  const since = (ts) => (ts ? ago(now() - ts) : dash);

  function clock(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function mib(value) {
    if (value === null || value === undefined) return dash;
    return value >= 1024 ? `${(value / 1024).toFixed(1)} GiB` : `${Math.round(value)} MiB`;
  }
  const cores = (v) => (v === null || v === undefined ? dash : `${+Number(v).toFixed(2)}`);
  const pct = (v) => (v === null || v === undefined ? dash : `${Number(v).toFixed(0)} %`);
  const json = (v) => JSON.stringify(v, null, 2);
  const counts = (obj) =>
    Object.entries(obj || {}).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(", ") || dash;

  // ------------------------------------------------------------------ banner

  function showBanner(message, kind) {
    $("banner-text").textContent = message;
    $("banner").dataset.kind = kind || "error";
    $("banner").hidden = false;
  }
  function clearBanner(kind) {
    if (!kind || $("banner").dataset.kind === kind) $("banner").hidden = true;
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  class AuthError extends Error {}

  function errorText(data, text) {
    if (data && typeof data === "object") {
      if (typeof data.message === "string" && data.message) return data.message;
      if (typeof data.detail === "string") return data.detail;
      if (Array.isArray(data.detail)) {
        return data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
      }
    }
    return (text || "").slice(0, 300) || "no details";
  }

  function authHeaders(extra) {
    return { Authorization: `Bearer ${state.token}`, ...extra };
  }

  /** One API call; JSON in and out. 401 -> back to the login form (AuthError). */
  async function api(method, path, body) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(new URL(path, API), init);
    } catch (err) {
      throw new ApiError(0, `${method} ${path}: the root orchestrator did not answer (${err.message})`);
    }
    if (resp.status === 401) {
      sessionExpired();
      throw new AuthError("401");
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, `${method} ${path}: HTTP ${resp.status}: ${errorText(data, text)}`);
    }
    return data;
  }

  // ------------------------------------------------------------------ login / logout

  function showLogin(message) {
    stopEverything();
    $("app").hidden = true;
    $("nav").hidden = true;
    $("logout").hidden = true;
    $("stream-state").hidden = true;
    clearBanner();
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("login-error").hidden = !message;
    $("token").value = "";
    $("token").focus();
  }

  function sessionExpired() {
    if (state.expired) return;
    state.expired = true;
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin("The root refused the token (HTTP 401). Log in again.");
  }

  async function onLogin(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      showLogin("Enter the operator token.");
      return;
    }
    $("login-submit").disabled = true;
    try {
      const resp = await fetch(new URL("clusters", API), {
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
        cache: "no-store",
      });
      if (resp.status === 401) {
        showLogin("That token was refused (HTTP 401).");
        return;
      }
      if (!resp.ok) {
        showLogin(`The root answered HTTP ${resp.status}; try again.`);
        return;
      }
    } catch (err) {
      showLogin(`Could not reach the root orchestrator (${err.message}).`);
      return;
    } finally {
      $("login-submit").disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    enter(token);
  }

  function enter(token) {
    state.token = token;
    state.expired = false;
    $("login").hidden = true;
    $("app").hidden = false;
    $("nav").hidden = false;
    $("logout").hidden = false;
    $("stream-state").hidden = false;
    route();
    startStream();
    state.pollTimer = setInterval(() => {
      if (!document.hidden) scheduleRefresh(0); // no polling from a background tab
    }, POLL_MS);
  }

  function stopEverything() {
    clearInterval(state.pollTimer);
    clearTimeout(state.refreshTimer);
    state.refreshTimer = null;
    state.streamGen += 1;
    if (state.streamAbort) state.streamAbort.abort();
    state.streamAbort = null;
    if (state.view) state.view.alive = false;
    state.view = null;
    state.lastSeq = null;
    $("event-list").replaceChildren();
    $("events-empty").hidden = false;
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin("Logged out.");
  }

  // ------------------------------------------------------------------ routing and refresh

  function parseHash() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    return parts.map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (_) {
        return p;
      }
    });
  }

  function route() {
    if (!state.token) return;
    const [page, id] = parseHash();
    let view;
    if (page === "jobs" && id) view = jobDetailView(id);
    else if (page === "jobs") view = jobsView();
    else view = clustersView();
    if (state.view) state.view.alive = false;
    state.view = view;
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.route === (page === "jobs" ? "jobs" : "clusters"));
    }
    clearBanner("load");
    $("view").replaceChildren(view.root);
    scheduleRefresh(0);
  }

  /** Refresh the view after `delay` ms (0: now, for user actions and the poll); without
   * a delay (an event arrived), not sooner than EVENT_REFRESH_GAP_MS after the last one. */
  function scheduleRefresh(delay) {
    let wait = delay;
    if (wait === undefined) {
      wait = Math.max(300, state.refreshedAt + EVENT_REFRESH_GAP_MS - performance.now());
      if (state.refreshTimer !== null) return; // one is due already
    }
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(() => {
      state.refreshTimer = null;
      refresh();
    }, wait);
  }

  async function refresh() {
    const view = state.view;
    if (!view || !state.token) return;
    if (state.refreshing) {
      state.refreshAgain = true;
      return;
    }
    state.refreshing = true;
    state.refreshedAt = performance.now();
    try {
      await view.refresh();
      if (view.alive) clearBanner("load");
    } catch (err) {
      if (!(err instanceof AuthError) && view.alive) showBanner(err.message, "load");
    } finally {
      state.refreshing = false;
      if (state.refreshAgain) {
        state.refreshAgain = false;
        scheduleRefresh(0);
      }
    }
  }

  // ------------------------------------------------------------------ clusters view

  function clustersView() {
    const list = h("div", { class: "cards", id: "cluster-list" });
    const view = {
      alive: true,
      root: h("section", { class: "view", id: "clusters-view" }, h("h1", { text: "Clusters" }), list),
      async refresh() {
        const data = await api("GET", "clusters");
        const clusters = data.clusters || [];
        for (const c of clusters) state.clusterNames.set(c.id, c.name);
        // nodes come from each cluster's own API; skip clusters the root cannot reach
        const nodes = await Promise.all(clusters.map((c) => {
          if (c.liveness !== "READY") return Promise.resolve({ error: `cluster is ${c.liveness}` });
          return api("GET", `clusters/${enc(c.id)}/nodes`).then(
            (r) => ({ nodes: r.nodes || [] }),
            (err) => {
              if (err instanceof AuthError) throw err;
              return { error: err.message };
            });
        }));
        if (!view.alive) return;
        fill(list, (clusters.length
          ? clusters.map((c, i) => clusterCard(c, nodes[i]))
          : h("p", { class: "empty", text: "No cluster has registered yet." })));
      },
    };
    return view;
  }

  function clusterCard(c, nodes) {
    const r = c.report;
    const labels = Object.entries(c.labels || {}).map(([k, v]) => h("code", { text: `${k}=${v}` }));
    const capacity = r ? table(["", "free", "total"], [
      h("tr", null, h("th", { text: "CPU (cores)" }), h("td", { text: cores(r.free.cpu) }),
        h("td", { text: cores(r.total.cpu) })),
      h("tr", null, h("th", { text: "memory" }), h("td", { text: mib(r.free.memory_mib) }),
        h("td", { text: mib(r.total.memory_mib) })),
      h("tr", null, h("th", { text: "largest free on one node" }),
        h("td", { colspan: 2, text: `${cores(r.largest_free_cpu)} cores, ${mib(r.largest_free_memory_mib)}` })),
    ], "kv") : h("p", { class: "empty", text: "No report yet." });
    const facts = h("dl", { class: "facts" },
      h("dt", { text: "last report" }),
      h("dd", { class: "report-age", text: ago(c.seconds_since_report) }),
      h("dt", { text: "nodes" }), h("dd", { text: r ? counts(r.nodes_by_liveness) : dash }),
      h("dt", { text: "instances" }), h("dd", { text: counts(c.instances) }),
      h("dt", { text: "hottest" }),
      h("dd", { text: r && r.thermal.max_temperature_c != null ? `${r.thermal.max_temperature_c.toFixed(1)} \u00b0C` : dash }),
      h("dt", { text: "hot / throttled nodes" }),
      h("dd", { text: r ? `${r.thermal.hot_nodes} / ${r.thermal.throttled_nodes}` : dash }),
      c.location ? [h("dt", { text: "location" }), h("dd", { text: c.location })] : null,
      labels.length ? [h("dt", { text: "labels" }), h("dd", null, labels)] : null,
      c.reason ? [h("dt", { text: "reason" }), h("dd", { text: c.reason })] : null);
    return h("article", { class: "card cluster", dataset: { cluster: c.name } },
      h("header", null,
        h("h2", { text: c.name }), badge(c.liveness, "liveness"),
        h("span", { class: "muted", text: `since ${since(c.liveness_since)}` })),
      h("div", { class: "cluster-body" }, facts, capacity),
      nodes.error
        ? h("p", { class: "muted nodes-error", text: `Nodes not available: ${nodes.error}` })
        : nodesTable(nodes.nodes));
  }

  function throttlingText(t) {
    if (!t) return dash;
    const flags = ["throttled", "under_voltage", "frequency_capped", "soft_temperature_limit"]
      .filter((f) => t[f]).map((f) => f.replace(/_/g, " "));
    if (!flags.length) return t.occurred_since_boot ? "ok (earlier since boot)" : "ok";
    return flags.join(", ");
  }

  function meter(value) {
    if (value === null || value === undefined) return dash;
    return [h("meter", { min: 0, max: 100, low: 70, high: 90, optimum: 0, value: Number(value) }),
      " ", pct(value)];
  }

  function nodesTable(nodes) {
    if (!nodes.length) return h("p", { class: "empty", text: "No node has joined." });
    const rows = nodes.map((n) => {
      const s = n.status;
      const running = s ? s.tasks.filter((t) => t.state === "RUNNING").length : null;
      const throttled = s && s.throttling && (s.throttling.throttled || s.throttling.under_voltage ||
        s.throttling.frequency_capped || s.throttling.soft_temperature_limit);
      return h("tr", { dataset: { node: n.info.name } },
        h("td", { title: `${n.info.hostname} (${n.info.arch}, ${n.info.cpu_cores} cores, ${mib(n.info.memory_mib)})` },
          n.info.name),
        h("td", null, badge(n.liveness, "liveness"), n.draining ? [" ", badge("DRAINING")] : null),
        h("td", null, s ? meter(s.cpu_percent) : dash),
        h("td", { text: s ? s.load_1m.toFixed(2) : dash }),
        h("td", null, s ? [meter(s.memory.used_percent), ` of ${mib(s.memory.total_mib)}`] : dash),
        h("td", { text: s && s.max_temperature_c != null ? `${s.max_temperature_c.toFixed(1)} \u00b0C` : dash }),
        h("td", { class: throttled ? "warn" : "", text: s ? throttlingText(s.throttling) : dash }),
        h("td", { text: s ? `${running} running / ${s.tasks.length}` : dash }),
        h("td", { text: since(n.last_seen) }),
        h("td", { text: [n.reason, s && s.shedding ? "shedding" : ""].filter(Boolean).join("; ") }));
    });
    return table(["node", "liveness", "CPU", "load", "memory", "temp", "throttling", "tasks",
      "last seen", "notes"], rows, "grid nodes");
  }

  // ------------------------------------------------------------------ jobs view

  function jobsView() {
    const filter = h("select", { id: "job-filter", "aria-label": "state filter" },
      h("option", { value: "active", text: "active (not terminated)" }),
      h("option", { value: "", text: "all states" }),
      JOB_STATES.map((s) => h("option", { value: s, text: s })));
    filter.value = sessionStorage.getItem("edge.jobFilter") || "active";
    filter.addEventListener("change", () => {
      sessionStorage.setItem("edge.jobFilter", filter.value);
      scheduleRefresh(0);
    });
    const body = h("div", { id: "job-list" });
    const view = {
      alive: true,
      root: h("section", { class: "view", id: "jobs-view" },
        h("div", { class: "title-row" }, h("h1", { text: "Jobs" }), h("label", null, "show ", filter)),
        body),
      async refresh() {
        const wanted = filter.value;
        const query = JOB_STATES.includes(wanted) ? `&state=${enc(wanted)}` : "";
        const data = await api("GET", `jobs?limit=500${query}`);
        if (!view.alive) return;
        let jobs = data.jobs || [];
        for (const j of jobs) state.jobNames.set(j.id, j.name);
        if (wanted === "active") jobs = jobs.filter((j) => j.state !== "TERMINATED");
        const rows = jobs.map((j) => h("tr", { dataset: { job: j.name } },
          h("td", null, h("a", { href: `#/jobs/${enc(j.id)}`, text: j.name })),
          h("td", null, badge(j.state)),
          h("td", { class: "replicas", text: `${j.actual_replicas} / ${j.desired_replicas}` }),
          h("td", { text: j.priority }),
          h("td", { text: j.runtime }),
          h("td", { text: since(j.created_at) }),
          h("td", { class: "reason", text: j.reason })));
        fill(body,
          rows.length
            ? table(["name", "state", "running / desired", "priority", "runtime", "created", "reason"], rows)
            : h("p", { class: "empty", text: "No job to show." }),
          data.next_cursor ? h("p", { class: "muted", text: "Showing the first 500 jobs." }) : "");
      },
    };
    return view;
  }

  // ------------------------------------------------------------------ job detail view

  const KNOWN_JOB_FIELDS = new Set([
    "id", "name", "state", "desired_replicas", "actual_replicas", "priority", "runtime",
    "created_at", "updated_at", "reason", "spec", "deleted_at", "instance_counts", "placement",
    "instances",
  ]);
  const KNOWN_INSTANCE_FIELDS = new Set([
    "id", "job_id", "replica", "state", "cluster_id", "cluster_name", "node_id", "node_name",
    "reason", "created_at", "updated_at", "exit_code", "restarts", "terminating", "placement",
    "inference",
  ]);

  function clusterLabel(id) {
    const name = state.clusterNames.get(id);
    return name ? `${name} (${id})` : id;
  }

  function placementBlock(p) {
    if (!p) return h("p", { class: "empty", text: "No placement decision yet." });
    const d = p.decision;
    const parts = [
      h("p", { class: "explanation" }, badge(p.outcome), " ",
        p.cluster_name ? h("strong", { text: p.cluster_name }) : null, " ",
        h("span", { text: p.explanation }), " ", h("span", { class: "muted", text: since(p.at) })),
    ];
    if (d && Array.isArray(d.scores) && d.scores.length) {
      parts.push(table(["candidate", "score", "breakdown"], d.scores.map((s) => h("tr", null,
        h("td", { text: clusterLabel(s.id) }), h("td", { text: Number(s.score).toFixed(3) }),
        h("td", { class: "muted", text: Object.entries(s.breakdown || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(", ") })))));
    }
    if (d && d.rejections && Object.keys(d.rejections).length) {
      parts.push(h("p", { class: "muted", text: `rejected: ${counts(d.rejections)}` }));
    }
    for (const r of p.cluster_rejections || []) {
      parts.push(h("p", { class: "muted" }, `cluster ${r.cluster_name} refused: `,
        r.explanation || counts(r.reasons)));
    }
    return h("div", { class: "placement" }, parts);
  }

  function extrasList(obj, known) {
    const extra = Object.keys(obj).filter((k) => !known.has(k));
    if (!extra.length) return null;
    return h("dl", { class: "facts extra" },
      extra.map((k) => [h("dt", { text: k }), h("dd", null, typeof obj[k] === "object" && obj[k] !== null
        ? h("pre", { text: json(obj[k]) }) : String(obj[k]))]));
  }

  function instancesTable(instances) {
    if (!instances.length) return h("p", { class: "empty", text: "No instance." });
    const hasExtra = instances.some((i) => Object.keys(i).some((k) => !KNOWN_INSTANCE_FIELDS.has(k)));
    const rows = instances.map((i) => h("tr", { dataset: { instance: i.id, state: i.state } },
      h("td", { class: "mono", title: i.id, text: i.id }),
      h("td", { text: i.replica }),
      h("td", null, badge(i.state), i.terminating ? [" ", badge("terminating")] : null),
      h("td", { text: i.cluster_name || i.cluster_id || dash }),
      h("td", { text: i.node_name || i.node_id || dash }),
      h("td", { class: "reason", text: i.reason }),
      h("td", { text: i.restarts }),
      h("td", { text: i.exit_code == null ? dash : i.exit_code }),
      h("td", { text: since(i.updated_at) }),
      h("td", { class: "muted", text: i.placement ? i.placement.explanation : dash }),
      hasExtra ? h("td", null, extrasList(i, KNOWN_INSTANCE_FIELDS)) : null));
    const headers = ["instance", "replica", "state", "cluster", "node", "reason", "restarts",
      "exit", "updated", "placement"];
    if (hasExtra) headers.push("other");
    return table(headers, rows, "grid instances");
  }

  function jobDetailView(jobRef) {
    const title = h("h1", null, "Job ", h("span", { id: "job-title", text: jobRef }));
    const notice = h("p", { id: "action-notice", class: "notice", role: "status", hidden: true });
    const summary = h("div", { id: "job-summary" });
    const scaleInput = h("input", {
      id: "scale-replicas", type: "number", min: 0, max: 1000, step: 1, "aria-label": "replicas",
    });
    let scaleDirty = false;
    scaleInput.addEventListener("input", () => { scaleDirty = true; });
    const scaleButton = h("button", { id: "scale-submit", type: "submit", text: "Scale" });
    const scaleForm = h("form", { id: "scale-form", class: "inline", novalidate: true },
      h("label", { for: "scale-replicas", text: "replicas " }), scaleInput, scaleButton);
    const deleteButton = h("button", { id: "delete-job", type: "button", class: "danger", text: "Delete\u2026" });
    const question = h("span", { id: "delete-question" });
    const confirmBox = h("div", { id: "delete-confirm", class: "confirm", hidden: true },
      question,
      h("button", { id: "delete-yes", type: "button", class: "danger", text: "Yes, delete" }),
      h("button", { id: "delete-no", type: "button", text: "Cancel" }));
    const body = h("div", { id: "job-body" });
    let job = null;

    function say(text, kind) {
      notice.textContent = text;
      notice.dataset.kind = kind;
      notice.hidden = false;
    }

    scaleForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = scaleInput.value.trim();
      if (!/^\d+$/.test(value)) {
        say("Replicas must be a whole number.", "error");
        return;
      }
      scaleButton.disabled = true;
      try {
        const updated = await api("PATCH", `jobs/${enc(job ? job.id : jobRef)}`, { replicas: Number(value) });
        scaleDirty = false;
        say(`Scaled ${updated.name} to ${updated.desired_replicas} replicas.`, "ok");
        render(updated);
      } catch (err) {
        if (!(err instanceof AuthError)) say(err.message, "error");
      } finally {
        scaleButton.disabled = false;
      }
    });
    deleteButton.addEventListener("click", () => {
      question.textContent = `Delete job ${job ? job.name : jobRef}? Every instance will be terminated.`;
      confirmBox.hidden = false;
    });
    confirmBox.querySelector("#delete-no").addEventListener("click", () => { confirmBox.hidden = true; });
    confirmBox.querySelector("#delete-yes").addEventListener("click", async () => {
      confirmBox.hidden = true;
      try {
        const updated = await api("DELETE", `jobs/${enc(job ? job.id : jobRef)}`);
        say(`Deletion of ${updated.name} requested: its instances are being terminated.`, "ok");
        render(updated);
      } catch (err) {
        if (!(err instanceof AuthError)) say(err.message, "error");
      }
    });

    function render(j) {
      job = j;
      state.jobNames.set(j.id, j.name);
      for (const i of j.instances || []) {
        if (i.cluster_id && i.cluster_name) state.clusterNames.set(i.cluster_id, i.cluster_name);
      }
      title.lastChild.textContent = j.name;
      if (!scaleDirty && document.activeElement !== scaleInput) scaleInput.value = j.desired_replicas;
      const deleted = j.deleted_at !== null && j.deleted_at !== undefined;
      scaleInput.disabled = deleted;
      scaleButton.disabled = deleted;
      deleteButton.disabled = deleted;
      fill(summary, h("dl", { class: "facts" },
        h("dt", { text: "state" }), h("dd", null, badge(j.state, "job-state")),
        h("dt", { text: "running / desired" }),
        h("dd", { id: "job-replicas", text: `${j.actual_replicas} / ${j.desired_replicas}` }),
        h("dt", { text: "instances" }), h("dd", { text: counts(j.instance_counts) }),
        h("dt", { text: "priority" }), h("dd", { text: j.priority }),
        h("dt", { text: "runtime" }), h("dd", { text: j.runtime }),
        h("dt", { text: "id" }), h("dd", { class: "mono", text: j.id }),
        h("dt", { text: "created" }), h("dd", { text: since(j.created_at) }),
        h("dt", { text: "updated" }), h("dd", { text: since(j.updated_at) }),
        deleted ? [h("dt", { text: "deleted" }), h("dd", { text: since(j.deleted_at) })] : null,
        j.reason ? [h("dt", { text: "reason" }), h("dd", { class: "reason", text: j.reason })] : null));
      const extra = extrasList(j, KNOWN_JOB_FIELDS);
      fill(body,
        h("h2", { text: "Placement" }), placementBlock(j.placement),
        h("h2", { text: "Instances" }), instancesTable(j.instances || []),
        extra ? [h("h2", { text: "Other fields" }), extra] : null,
        h("details", { class: "spec" }, h("summary", { text: "Spec" }),
          h("pre", { id: "job-spec", text: json(j.spec) })));
    }

    const view = {
      alive: true,
      root: h("section", { class: "view", id: "job-view" },
        h("p", null, h("a", { href: "#/jobs", text: "\u2190 all jobs" })),
        title,
        h("div", { class: "actions" }, scaleForm, deleteButton, confirmBox),
        notice, summary, body),
      async refresh() {
        const j = await api("GET", `jobs/${enc(job ? job.id : jobRef)}`);
        if (view.alive) render(j);
      },
    };
    return view;
  }

  // ------------------------------------------------------------------ live events

  function setStreamState(text, kind) {
    const el = $("stream-state");
    el.textContent = text;
    el.dataset.state = kind;
  }

  function addEvent(ev) {
    if (typeof ev.seq !== "number") return;
    if (state.lastSeq !== null && ev.seq <= state.lastSeq) return; // replayed after a resume
    state.lastSeq = ev.seq;
    const category = String(ev.kind || "").split(".")[0].replace(/[^a-z_]/g, "");
    let subject;
    if (ev.job_id) {
      subject = h("a", { href: `#/jobs/${enc(ev.job_id)}`, text: state.jobNames.get(ev.job_id) || ev.job_id });
    } else {
      subject = h("span", { text: ev.cluster_id || ev.subject || "" });
    }
    const li = h("li", { class: `event cat-${category}`, dataset: { seq: ev.seq, kind: ev.kind } },
      h("time", { text: clock(ev.ts) }), " ",
      h("span", { class: "kind", text: ev.kind }), " ", subject,
      ev.state ? [" ", badge(ev.state)] : null,
      ev.reason ? h("div", { class: "reason", text: ev.reason }) : null);
    const list = $("event-list");
    list.prepend(li);
    while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
    $("events-empty").hidden = true;
    scheduleRefresh();
  }

  function handleFrame(frame) {
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return; // a comment (": keep-alive") or an empty frame
    try {
      addEvent(JSON.parse(data.join("\n")));
    } catch (_) {
      /* not an event: ignore */
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Fill the panel with the newest events; the stream then resumes after them. */
  async function loadRecentEvents() {
    try {
      const page = await api("GET", `events?tail=${RECENT_EVENTS}`);
      for (const ev of page.events || []) addEvent(ev);
      if (state.lastSeq === null) state.lastSeq = page.next_since;
    } catch (err) {
      if (err instanceof AuthError) throw err;
      // no history then: the stream starts with new events
    }
  }

  async function startStream() {
    const gen = ++state.streamGen;
    let backoff = 1000;
    try {
      await loadRecentEvents();
    } catch (_) {
      return; // 401: back at the login form
    }
    while (gen === state.streamGen && state.token) {
      const url = new URL("events/stream", API);
      if (state.lastSeq !== null) url.searchParams.set("since", String(state.lastSeq));
      const abort = new AbortController();
      state.streamAbort = abort;
      let idle = null;
      const arm = () => {
        clearTimeout(idle);
        idle = setTimeout(() => abort.abort(), STREAM_IDLE_MS);
      };
      let problem;
      try {
        setStreamState(state.lastSeq === null ? "events: connecting" : "events: resuming", "connecting");
        arm();
        const resp = await fetch(url, {
          headers: authHeaders({ Accept: "text/event-stream" }), cache: "no-store", signal: abort.signal,
        });
        if (resp.status === 401) {
          clearTimeout(idle);
          sessionExpired();
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        setStreamState("events: live", "live");
        backoff = 1000;
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          arm();
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true }).replace(/\r/g, "");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            handleFrame(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
          }
        }
        problem = "the stream ended";
      } catch (err) {
        problem = abort.signal.aborted ? "no data for a while" : err.message;
      } finally {
        clearTimeout(idle);
      }
      if (gen !== state.streamGen) return;
      setStreamState(`events: reconnecting (${problem})`, "down");
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  }

  // ------------------------------------------------------------------ start

  function start() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", logout);
    $("banner-close").addEventListener("click", () => clearBanner());
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.token) scheduleRefresh(0);
    });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) enter(token);
    else showLogin("");
  }

  start();
})();
