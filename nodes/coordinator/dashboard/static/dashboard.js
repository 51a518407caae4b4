// The dashboard page: one Server-Sent Events stream from the coordinator (`/api/events`) feeds
// the shard map, the members, the merges, two time-series charts (inline SVG) and the event log. No
// framework and no network access beyond this coordinator (its Content-Security-Policy says so).

const HISTORY_MS = 5 * 60_000;
const MAX_EVENTS = 200;
const SVG_NS = "http://www.w3.org/2000/svg";
// Tableau 10 and a few more: distinct, and legible under dark text when tinted.
const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#59a14f",
  "#e15759",
  "#76b7b2",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#86bcb6",
  "#8cd17d",
  "#d37295",
];

const byId = (id) => document.getElementById(id);
let history = [];
let markers = [];
const cells = new Map();

/** A worker keeps its colour whoever else joins: w3 is always the third colour. */
function ownerColor(id) {
  if (!id) return "#cfd4da";
  const m = /(\d+)$/.exec(id);
  let n = m ? Number(m[1]) - 1 : 0;
  if (!m) for (const ch of id) n = (n * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[n % PALETTE.length];
}

function fmt(n, decimals = 0) {
  if (n === null || n === undefined) return "-";
  if (decimals > 0 && Math.abs(n) < 10) return n.toFixed(decimals);
  return Math.round(n).toLocaleString("en-US");
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, String(v));
    else e[k] = v;
  }
  e.append(...children);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function renderHeader(s) {
  byId("coordinator").textContent = `${s.coordinator} (${s.isLeader ? "leader" : "standby"})`;
  byId("leader").textContent = s.leader ? `${s.leader.holder} · term ${s.leader.term}` : "none";
  byId("total-rate").textContent = fmt(s.totals.rate, 1);
  byId("total-lag").textContent = fmt(s.totals.lag);
  byId("owned").textContent = `${s.totals.owned} / ${s.totals.shards}`;
  renderSink(s.sink);
}

// The sink's health: unreachable, or shards whose commits keep failing (with their breakers).
function renderSink(sink) {
  const dd = byId("sink");
  if (!sink) return;
  const troubled = Object.entries(sink.trouble);
  dd.dataset.healthy = String(sink.healthy);
  dd.textContent = sink.healthy
    ? "healthy"
    : `UNHEALTHY${sink.reachable ? "" : " (unreachable)"}${troubled.length ? ` · ${troubled.length} shard(s) waiting` : ""}`;
  dd.title = [
    sink.error ? `read side: ${sink.error}` : "",
    ...troubled.map(([shard, t]) => `${shard} on ${t.worker}: circuit ${t.breaker}, ${t.error}`),
  ]
    .filter(Boolean)
    .join("\n");
}

function renderShards(shards, sink) {
  const map = byId("shard-map");
  for (const s of shards) {
    let cell = cells.get(s.shard);
    if (!cell) {
      cell = el(
        "li",
        { class: "shard", "data-shard": s.shard },
        el("div", { class: "shard-id" }, s.shard),
        el("div", { class: "shard-owner" }),
        el("div", { class: "shard-epoch" }),
        el("div", { class: "shard-nums" }),
      );
      cells.set(s.shard, cell);
      map.append(cell);
    }
    const prevEpoch = cell.dataset.epoch;
    cell.dataset.owner = s.owner ?? "";
    cell.dataset.epoch = String(s.epoch);
    cell.dataset.phase = s.phase;
    const trouble = sink?.trouble[s.shard];
    cell.dataset.sink = trouble ? trouble.breaker : "ok";
    cell.style.setProperty("--owner", ownerColor(s.owner));
    cell.querySelector(".shard-owner").textContent = s.next
      ? `${s.owner} → ${s.next}`
      : (s.owner ?? "unassigned");
    cell.querySelector(".shard-epoch").textContent = `e${s.epoch} · ${s.phase}`;
    cell.querySelector(".shard-nums").textContent =
      `seq ${fmt(s.committed)} · lag ${fmt(s.lag)} · ${fmt(s.rate, 1)}/s`;
    cell.title = `${s.shard}: owner ${s.owner ?? "none"}, epoch ${s.epoch} (sink fenced at ${s.fencedEpoch ?? "?"}), ${s.phase}${trouble ? `; commits failing, circuit ${trouble.breaker}: ${trouble.error}` : ""}`;
    if (prevEpoch !== undefined && prevEpoch !== String(s.epoch)) {
      // Restart the highlight animation on every move.
      cell.classList.remove("moved");
      void cell.offsetWidth;
      cell.classList.add("moved");
    }
  }
}

function renderMembers(members) {
  const rows = members.map((m) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.setProperty("--owner", ownerColor(m.id));
    return el(
      "tr",
      { "data-member": m.id, "data-status": m.status },
      el("td", {}, swatch, m.id),
      el("td", {}, el("span", { class: `status ${m.status}` }, m.status)),
      el("td", { class: "num" }, String(m.shards)),
      el("td", { class: "num" }, m.lastHeartbeatMsAgo === null ? "-" : `${fmt(m.lastHeartbeatMsAgo)} ms ago`),
      el("td", { class: "num" }, m.heartbeatDelayMs === null ? "-" : `${fmt(m.heartbeatDelayMs)} ms`),
    );
  });
  byId("members").tBodies[0].replaceChildren(...rows);
}

// Quality rules' counts, and shards holding their records for a stage's input.
function renderStages(stages) {
  if (!stages) return;
  const rows = Object.entries(stages.rules)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([rule, c]) =>
      el(
        "tr",
        { "data-rule": rule },
        el("td", {}, rule),
        el("td", { class: "num" }, fmt(c.checked)),
        el("td", { class: "num" }, fmt(c.rejected)),
        el("td", { class: "num" }, fmt(c.shadowed)),
      ),
    );
  byId("rules").tBodies[0].replaceChildren(...rows);
  const waits = Object.entries(stages.waiting)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([shard, w]) => el("li", { "data-shard": shard }, `${shard} waits on ${w.worker}: ${w.reason}`));
  byId("waiting").replaceChildren(...waits);
}

/** ms since the epoch as ISO-8601 UTC, or "none yet" while a shard has no watermark. */
function isoTime(ms) {
  return ms === null || ms === undefined ? "none yet" : new Date(ms).toISOString();
}

// Each merge: its convergence watermark, and per branch its watermark, lag and pending late records.
function renderMerges(merges) {
  const panel = byId("merges-panel");
  if (!merges || merges.length === 0) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  const tables = merges.map((m) =>
    el(
      "table",
      { class: "merge", "data-merge": m.merge, "data-convergence": m.convergence ?? "" },
      el(
        "caption",
        {},
        el("strong", {}, m.merge),
        ` (${m.policy}) · final below `,
        el("time", { class: "convergence" }, isoTime(m.convergence)),
      ),
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", {}, "branch"),
          el("th", {}, "priority"),
          el("th", {}, "watermark"),
          el("th", {}, "lag"),
          el("th", {}, "late pending"),
        ),
      ),
      el(
        "tbody",
        {},
        ...m.branches.map((b) =>
          el(
            "tr",
            { "data-pipeline": b.pipeline, "data-lag": b.lagMs ?? "" },
            el("td", {}, b.pipeline),
            el("td", { class: "num" }, String(b.priority)),
            el("td", {}, isoTime(b.watermark)),
            el("td", { class: "num" }, b.lagMs === null ? "-" : `${fmt(b.lagMs)} ms`),
            el("td", { class: "num" }, fmt(b.pendingLate)),
          ),
        ),
      ),
    ),
  );
  byId("merges").replaceChildren(...tables);
}

const LABELS = {
  "member-joined": "joined",
  "member-lost": "lost",
  leader: "leader",
};

function eventLabel(e) {
  if (e.type !== "assignment") return LABELS[e.type] ?? e.type;
  if (e.reason === "failure") return "failover";
  if (e.reason === "initial" || e.reason === "observed") return "assign";
  return "rebalance";
}

function addEvent(e) {
  if (e.type === "member-lost" || e.type === "leader") {
    markers.push({ at: e.at, type: e.type, text: e.text });
    while (markers.length > 0 && markers[0].at < e.at - HISTORY_MS) markers.shift();
  }
  const list = byId("events");
  const label = eventLabel(e);
  const item = el(
    "li",
    {
      "data-id": e.id,
      "data-type": e.type,
      "data-worker": e.worker,
      "data-shard": e.shard,
      "data-reason": e.reason,
    },
    el("time", {}, new Date(e.at).toLocaleTimeString("en-GB")),
    el("span", { class: `badge ${label}` }, label),
    el("span", { class: "text" }, e.text),
  );
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function niceMax(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/** "-45 s", "-3 min": how far back the left edge of a chart is. */
function spanLabel(ms) {
  return ms >= 120_000 ? `-${Math.round(ms / 60_000)} min` : `-${Math.round(ms / 1000)} s`;
}

/**
 * A time series as SVG polylines (split where the value is unknown), with a vertical marker
 * at every lost member and leader change. The window grows from one minute to five as history
 * accumulates, so a freshly started coordinator does not draw into a sliver at the right.
 */
function drawChart(target, key, color) {
  const W = 600;
  const H = 180;
  const left = 52;
  const right = 6;
  const top = 8;
  const bottom = 20;
  const end = history.length ? history[history.length - 1].at : Date.now();
  const first = history.length ? history[0].at : end;
  const span = Math.min(HISTORY_MS, Math.max(60_000, end - first));
  const start = end - span;
  const pts = history.filter((p) => p.at >= start);
  const known = pts.filter((p) => p[key] !== null);
  const max = niceMax(Math.max(0, ...known.map((p) => p[key])));
  const x = (at) => left + ((at - start) / span) * (W - left - right);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  const parts = [];
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    parts.push(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = fmt(v);
    parts.push(label);
  }
  for (const [at, text, anchor] of [
    [start, spanLabel(span), "start"],
    [end, "now", "end"],
  ]) {
    const label = svg("text", { x: x(at), y: H - 4, class: "axis", "text-anchor": anchor });
    label.textContent = text;
    parts.push(label);
  }
  for (const m of markers) {
    if (m.at < start || m.at > end) continue;
    const line = svg("line", {
      x1: x(m.at),
      x2: x(m.at),
      y1: top,
      y2: H - bottom,
      class: `marker ${m.type}`,
    });
    const tip = svg("title");
    tip.textContent = m.text;
    line.append(tip);
    parts.push(line);
  }
  let segment = [];
  const flush = () => {
    if (segment.length > 0) {
      const line = svg("polyline", { points: segment.join(" "), class: "series" });
      line.style.setProperty("stroke", color);
      parts.push(line);
    }
    segment = [];
  };
  for (const p of pts) {
    if (p[key] === null) flush();
    else segment.push(`${x(p.at).toFixed(1)},${y(p[key]).toFixed(1)}`);
  }
  flush();
  target.dataset.points = String(known.length);
  target.replaceChildren(...parts);
}

function renderCharts() {
  drawChart(byId("chart-rate"), "rate", "#4e79a7");
  drawChart(byId("chart-lag"), "lag", "#e15759");
}

function applyState(s) {
  renderHeader(s);
  renderShards(s.shards, s.sink);
  renderMembers(s.members);
  renderStages(s.stages);
  renderMerges(s.merges);
  document.body.dataset.updated = String(s.at);
}

function pushPoint(s) {
  history.push({ at: s.at, rate: s.totals.rate, lag: s.totals.lag });
  const cutoff = s.at - HISTORY_MS;
  while (history.length > 0 && history[0].at < cutoff) history.shift();
}

function setConnection(state) {
  const c = byId("conn");
  c.dataset.state = state;
  c.textContent = state;
}

const stream = new EventSource("/api/events");
stream.addEventListener("open", () => setConnection("live"));
stream.addEventListener("error", () => setConnection("reconnecting"));
stream.addEventListener("hello", (m) => {
  // Sent on every (re)connect, possibly by a restarted coordinator: start over from it.
  const d = JSON.parse(m.data);
  history = d.history;
  markers = [];
  byId("events").replaceChildren();
  for (const e of d.events) addEvent(e);
  applyState(d.state);
  renderCharts();
});
stream.addEventListener("state", (m) => {
  const s = JSON.parse(m.data);
  pushPoint(s);
  applyState(s);
  renderCharts();
});
stream.addEventListener("cluster", (m) => {
  addEvent(JSON.parse(m.data));
  renderCharts();
});
