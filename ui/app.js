// The dashboard: GET /v1/status, redrawn whenever /v1/events says something
// changed (and every 5 s besides); the events themselves fill the timeline.
// Everything from the service is put in the page as text, never as HTML.

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const gib = (bytes) => `${(bytes / 2 ** 30).toFixed(bytes >= 10 * 2 ** 30 ? 0 : 1)} GiB`;

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function services(st) {
  const cards = st.services.map((s) => {
    const health = Object.fromEntries(s.candidates.map((c) => [c.node, c]));
    const order = s.plan.order.map((ch) => {
      const c = health[ch.node] || {};
      return el("li", { "data-health": c.health, "data-node": ch.node },
        el("span", { class: "dot" }), el("span", {}, ch.node, " ", el("span", { class: "muted" }, c.health || "")),
        el("span", { class: "why" }, ch.why));
    });
    const skipped = s.plan.skipped.map((ch) => {
      const c = health[ch.node] || {};
      return el("li", { "data-health": c.health, "data-node": ch.node, class: "skipped" },
        el("span", { class: "dot" }), el("span", {}, ch.node, " ", el("span", { class: "muted" }, "left out")),
        el("span", { class: "why" }, ch.why));
    });
    const route = s.route ?? "";
    return el("article", { class: "card", "data-service": s.name },
      el("div", { class: "muted" }, `${s.name} · ${s.listen}`, s.pinned ? ` · pinned to ${s.pinned}` : ""),
      el("div", { class: "route", "data-node": route }, route ? `⚡ ${route}` : "nothing is up"),
      s.endpoint !== "listening" ? el("div", { class: "why" }, s.endpoint) : null,
      el("ul", { class: "candidates" }, order, skipped));
  });
  $("#services .cards").replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "No services configured.")]));
}

// Every node this one knows of, with its health layer by layer: the SSH session
// (its tunnels), then each service it runs; and its hardware.
function nodes(st) {
  const names = new Set(Object.keys(st.nodes || {}));
  for (const t of st.tunnels) names.add(t.peer);
  for (const s of st.services) for (const c of s.candidates) names.add(c.node);
  const cards = [...names].map((name) => {
    const n = (st.nodes || {})[name] || {};
    const inv = n.inventory;
    const gpus = inv ? inv.gpus.map((g) => el("div", { class: "gpu" }, `${g.name} · ${gib(g.vram_bytes)} VRAM`)) : [];
    const tunnels = st.tunnels.filter((t) => t.peer === name);
    const layers = [];
    if (tunnels.length) {
      const up = tunnels.filter((t) => t.state === "up").length;
      const health = up === tunnels.length ? "online" : up ? "degraded" : "offline";
      layers.push(el("li", { "data-health": health, "data-layer": "ssh" }, el("span", { class: "dot" }),
        el("span", {}, `ssh: ${up}/${tunnels.length} tunnels up`)));
    } else if (name === st.node) {
      layers.push(el("li", { "data-health": "online", "data-layer": "ssh" }, el("span", { class: "dot" }), el("span", {}, "this node")));
    }
    for (const s of st.services) {
      const c = s.candidates.find((c) => c.node === name);
      if (!c) continue;
      const role = c.postgres_role ? ` (${c.postgres_role})` : "";
      layers.push(el("li", { "data-health": c.health, "data-layer": s.name }, el("span", { class: "dot" }),
        el("span", {}, `${s.name}: ${c.health}${role}`, c.latency_ms != null ? el("span", { class: "muted" }, ` ${c.latency_ms.toFixed(1)} ms`) : null),
        c.health !== "online" && c.reason ? el("span", { class: "why" }, c.reason) : null));
    }
    return el("article", { class: "card", "data-node": name },
      el("div", { class: "route" }, name),
      el("ul", { class: "candidates" }, layers),
      inv ? el("div", {}, `${inv.cpu.model} · ${inv.cpu.cores} cores · ${gib(inv.memory_bytes)} RAM`) : null,
      gpus.length ? gpus : el("div", { class: "muted" }, inv ? `no GPU (${inv.gpu_source})` : "hardware not known"),
      n.error ? el("div", { class: "why" }, n.error) : null);
  });
  $("#nodes .cards").replaceChildren(...cards);
}

function tunnels(st) {
  const rows = st.tunnels.map((t) =>
    el("div", { "data-tunnel": t.name },
      el("strong", {}, t.name), " ", el("span", { class: `state-${t.state}` }, t.state),
      " ", el("span", { class: "muted" }, `${t.kind === "local" ? "-L" : "-R"} ${t.local} → ${t.remote} via ${t.peer}`),
      el("div", { class: "why" }, t.reason ? `${t.reason} · ` : "", `since `, el("time", { dateTime: t.since }, ago(t.since)))));
  $("#tunnels .rows").replaceChildren(...(rows.length ? rows : [el("div", { class: "muted" }, "No tunnels: local-only mode.")]));
}

function store(st) {
  const s = st.store;
  if (!s) return;
  const sync = s.sync || {};
  const rows = [
    el("div", { "data-sync": sync.state },
      el("strong", {}, `${sync.pending ?? 0} pending`), " ",
      el("span", { class: "muted" }, sync.state === "off" ? "kept on this node only" : `${sync.state} · last sync ${sync.last_sync ? ago(sync.last_sync) : "never"}`),
      sync.last_error ? el("div", { class: "why" }, sync.last_error) : null,
      sync.held_back ? el("div", { class: "why" }, sync.held_back) : null,
      sync.notice ? el("div", { class: "why", "data-notice": "" }, sync.notice) : null),
  ];
  if (sync.rejected) {
    rows.push(el("div", { "data-rejected": sync.rejected },
      el("strong", {}, `${sync.rejected} set aside`), " ",
      el("span", { class: "muted" }, "refused by the primary, kept here"),
      ...(sync.rejected_rows || []).map((r) => el("div", { class: "why" }, `${r.kind} ${r.id}: ${r.reason}`))));
  }
  if (s.replica) rows.push(el("div", { "data-replica": s.replica.state }, el("strong", {}, "replica "), s.replica.summary));
  if (s.error) rows.push(el("div", { class: "why" }, s.error));
  $("#store .rows").replaceChildren(...rows);
}

function eventText(e) {
  switch (e.type) {
    case "route": return `${e.service} → ${e.to ?? "nothing"}: ${e.reason}`;
    case "health": return `${e.service} on ${e.node}: ${e.health}${e.reason ? ` (${e.reason})` : ""}`;
    case "tunnel": return `tunnel ${e.tunnel}: ${e.state.state ?? e.state}${e.state.reason ? ` (${e.state.reason})` : ""}`;
    case "host_key_alarm": return `host key alarm for ${e.peer}: ${e.message}`;
    case "internal_error": return `internal error: ${e.task} failed (${e.error}); started again`;
    default: return JSON.stringify(e);
  }
}

function addEvent(e) {
  const at = new Date(e.at);
  const li = el("li", { "data-type": e.type },
    el("time", { dateTime: e.at }, at.toLocaleTimeString([], { hour12: false })), el("span", {}, eventText(e)));
  const list = $("#events .timeline");
  list.prepend(li);
  while (list.children.length > 100) list.lastChild.remove();
}

// The doctor's last findings: the failed ones first, each with its fix.
function doctor(report, why) {
  const rows = [];
  if (!report) {
    rows.push(el("div", { class: "muted" }, why || "Not run yet: “Check now”, or `robbie-mesh doctor` in a terminal."));
  } else {
    const failed = report.findings.filter((f) => f.verdict === "fail");
    rows.push(el("div", { "data-doctor": report.ok ? "ok" : "failed" },
      el("strong", {}, report.ok ? "✓ all checks passed" : `✗ ${failed.length} of ${report.findings.length} checks failed`),
      " ", el("span", { class: "muted" }, el("time", { dateTime: report.at }, ago(report.at)))));
    const order = [...failed, ...report.findings.filter((f) => f.verdict !== "fail")];
    for (const f of order) {
      const mark = f.verdict === "pass" ? "✓" : f.verdict === "fail" ? "✗" : "-";
      rows.push(el("div", { "data-verdict": f.verdict },
        `${mark} ${f.check}: ${f.detail}`,
        f.fix ? el("div", { class: "why" }, `fix: ${f.fix}`) : null));
    }
  }
  $("#doctor .rows").replaceChildren(...rows);
}

async function loadDoctor() {
  try {
    const r = await fetch("/v1/doctor", { cache: "no-store" });
    if (r.ok) doctor((await r.json()).report);
  } catch { /* the banner says the service is down */ }
}

async function runDoctor() {
  const b = $("#doctor-run");
  b.disabled = true;
  b.textContent = "Checking…";
  try {
    const r = await fetch("/v1/doctor", { method: "POST", cache: "no-store" });
    if (r.status === 401) doctor(null, "Sign in to run it from here: `robbie-mesh dashboard` opens this page signed in.");
    else if (r.ok) doctor(await r.json());
  } finally {
    b.disabled = false;
    b.textContent = "Check now";
  }
}

let refreshing = null;
async function refresh() {
  try {
    const r = await fetch("/v1/status", { cache: "no-store" });
    const st = await r.json();
    document.title = `robbie-mesh · ${st.node}`;
    $("#node").textContent = `${st.node} · ${st.mode}`;
    $("#down").hidden = true;
    services(st); nodes(st); tunnels(st); store(st);
    $("#setup").hidden = !(st.mode === "local-only" && st.services.length === 0);
    document.body.dataset.loaded = "1";
  } catch {
    $("#down").hidden = false;
    setLive("down", "service not running");
  }
}

// Many events in a burst become one redraw.
function soon() {
  if (refreshing) return;
  refreshing = setTimeout(() => { refreshing = null; refresh(); }, 50);
}

function setLive(state, text) {
  const p = $("#live");
  p.dataset.state = state;
  p.textContent = text;
}

function listen() {
  const es = new EventSource("/v1/events");
  es.onopen = () => { setLive("live", "live"); soon(); };
  es.onerror = () => setLive("down", "reconnecting…");
  for (const type of ["route", "health", "tunnel", "host_key_alarm", "internal_error"]) {
    es.addEventListener(type, (m) => { addEvent(JSON.parse(m.data)); soon(); });
  }
}

refresh();
loadDoctor();
listen();
setInterval(() => { refresh(); loadDoctor(); }, 5000);
$("#doctor-run").addEventListener("click", runDoctor);
