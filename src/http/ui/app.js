// The kvs dashboard: polls /admin/v1/cluster once a second and redraws the members
// table. Text goes in through textContent only, so nothing a member reports is markup.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "kvs-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
// Per member id: the last writes_total and the answering node's clock, for writes/s.
const previous = new Map();

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function ago(nowMs, thenMs) {
  if (thenMs == null) return "never";
  const seconds = Math.max(0, (nowMs - thenMs) / 1000);
  return seconds < 60 ? `${seconds.toFixed(1)} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function writesPerSecond(member, nowMs) {
  if (member.writes_total == null) return "–";
  const before = previous.get(member.id);
  previous.set(member.id, { writes: member.writes_total, at: nowMs });
  if (!before || nowMs <= before.at || member.writes_total < before.writes) return "–";
  return ((member.writes_total - before.writes) * 1000 / (nowMs - before.at)).toFixed(1);
}

// The root most answering members hold: a root that differs from it is marked.
function majorityRoot(members) {
  const counts = new Map();
  for (const m of members) if (m.merkle_root) counts.set(m.merkle_root, (counts.get(m.merkle_root) || 0) + 1);
  let best = null;
  for (const [root, n] of counts) if (best === null || n > counts.get(best)) best = root;
  return best;
}

function render(view) {
  const body = document.querySelector("#members tbody");
  const rows = [];
  const majority = majorityRoot(view.members);
  for (const m of view.members) {
    const row = document.createElement("tr");
    row.className = "member";
    row.dataset.id = m.id;
    row.dataset.name = m.name;
    row.dataset.state = m.state;
    const name = cell(row, m.name);
    if (m.this_node) {
      const tag = document.createElement("span");
      tag.className = "this-node";
      tag.textContent = "(this node)";
      name.append(tag);
    }
    cell(row, m.state, `state state-${m.state}`);
    cell(row, m.addr);
    cell(row, m.ready == null ? "–" : m.ready ? "yes" : "no");
    cell(row, m.records == null ? "–" : m.records.toLocaleString(), "num");
    const root = cell(row, m.merkle_root ? m.merkle_root.slice(0, 16) : "–", "root");
    if (m.merkle_root) {
      root.title = m.merkle_root;
      root.dataset.root = m.merkle_root;
      if (m.merkle_root !== majority) root.classList.add("differs");
    }
    cell(row, m.merkle_root ? ago(view.now_ms, m.last_sync_ms) : "–");
    cell(row, writesPerSecond(m, view.now_ms), "num");
    cell(row, m.error || "");
    rows.push(row);
  }
  body.replaceChildren(...rows);
  const alive = view.members.filter((m) => m.state === "alive").length;
  const summary = document.getElementById("summary");
  summary.dataset.agree = String(view.roots_agree);
  const count = view.members.length;
  summary.textContent = `${count} member${count === 1 ? "" : "s"} · ${alive} alive · ` +
    (view.roots_agree ? "all Merkle roots agree" : "Merkle roots differ or a member did not answer");
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.getElementById("problem").hidden = true;
  document.getElementById("auth").hidden = true;
}

function showProblem(text) {
  const problem = document.getElementById("problem");
  problem.textContent = text;
  problem.hidden = false;
  for (const row of document.querySelectorAll("#members tbody tr")) row.classList.add("stale");
}

async function problemText(reply) {
  try {
    const body = await reply.json();
    return `${reply.status} ${body.title || ""}: ${body.detail || ""}`;
  } catch {
    return `${reply.status} ${reply.statusText}`;
  }
}

async function poll() {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const reply = await fetch("../admin/v1/cluster", { headers, cache: "no-store" });
    if (reply.status === 401 || reply.status === 403) {
      document.getElementById("auth").hidden = false;
      showProblem(await problemText(reply));
    } else if (!reply.ok) {
      showProblem(await problemText(reply));
    } else {
      render(await reply.json());
    }
  } catch (error) {
    showProblem(`cannot reach this node: ${error.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
});

poll();
