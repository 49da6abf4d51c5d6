// The WFM Orchestrator's live dashboard: reads /ui/overview every REFRESH ms and draws it.
// Read-only. Every value is set as text (textContent), never as HTML: names and details
// come from users. With auth = keycloak the token is asked for on a 401/403 and kept in
// this tab's sessionStorage (docs/operations.md).
"use strict";

const REFRESH = 2000;
const TOKEN_KEY = "wfm-orchestrator-token";
const DIMENSIONS = [["cores", "cores", (v) => String(v)],
                    ["msize", "memory", mb], ["ssize", "storage", mb]];

function mb(value) {
  if (value >= 1048576) return (value / 1048576).toFixed(1).replace(/\.0$/, "") + " TB";
  if (value >= 1024) return (value / 1024).toFixed(1).replace(/\.0$/, "") + " GB";
  return value + " MB";
}

function duration(seconds) {
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Green (nothing used) through yellow to red (full).
function useColour(share) {
  const hue = Math.round(120 * (1 - Math.min(1, Math.max(0, share))));
  return "hsl(" + hue + ", 62%, 48%)";
}

function datanode(node) {
  const cell = el("div", {"class": "node state-" + node.state, "data-datanode": node.name,
                          "data-state": node.state},
                  el("span", {"class": "state"}, node.state),
                  el("span", {"class": "name"}, node.name),
                  el("span", {"class": "where"}, node.location));
  if (node.reason) cell.append(el("div", {"class": "reason"}, node.reason));
  for (const [key, label, show] of DIMENSIONS) {
    const total = node[key];
    const used = total - node["free_" + key];
    const share = total > 0 ? used / total : 0;
    const fill = el("div", {"class": "fill"});
    fill.style.width = (100 * share).toFixed(1) + "%";
    fill.style.background = useColour(share);
    cell.append(el("div", {"class": "bar", "data-dimension": key,
                           "data-use": share.toFixed(3),
                           "title": label + ": " + show(used) + " of " + show(total) + " in use"},
                   fill, el("span", {"class": "label"},
                            label + " " + show(used) + " / " + show(total))));
  }
  return cell;
}

function fillTable(id, rows, columns, emptyText) {
  const body = document.querySelector("#" + id + " tbody");
  const width = document.querySelectorAll("#" + id + " thead th").length;
  const fresh = document.createElement("tbody");
  if (rows.length === 0) {
    fresh.append(el("tr", {"class": "empty"}, el("td", {"colSpan": width}, emptyText)));
  }
  for (const row of rows) {
    const tr = el("tr", {"data-name": row.name});
    for (const [cls, value] of columns(row)) tr.append(el("td", {"class": cls}, value));
    fresh.append(tr);
  }
  body.replaceWith(fresh);
}

function statusRows(row) {
  return [["name", row.name], ["user", row.user], ["status", row.status],
          ["detail", row.detail], ["time", row.time]];
}

function draw(data) {
  const grid = document.getElementById("datanodes");
  grid.replaceChildren(...data.datanodes.map(datanode));
  const r = data.reservations;
  const states = Object.keys(r).map((s) => s.toLowerCase() + " " + r[s]).join(", ");
  document.getElementById("summary").textContent =
    data.datanodes.length + " datanodes; reservations: " + states +
    "; queue " + data.queue.length +
    (data.queue.length ? " (oldest waiting " + duration(data.queue.oldest_wait) + ")" : "");
  document.getElementById("queue-count").textContent = data.queue.length + " waiting";
  fillTable("queue", data.queue.items, (q) => [
    ["position", q.position], ["name", q.name], ["user", q.user],
    ["demand", q.servers + " × (" + q.cores + " cores, " + mb(q.msize) + ", " + mb(q.ssize) + ")"],
    ["locations", q.locations.join(", ") || "any"], ["waiting", duration(q.waiting)]],
    "the queue is empty");
  document.getElementById("services-count").textContent = data.services.count + " live";
  fillTable("services", data.services.items, statusRows, "no live service");
  document.getElementById("steps-count").textContent = data.steps.count + " known";
  fillTable("steps", data.steps.items, statusRows, "no step");
  const problem = document.getElementById("problem");
  const text = !data.slurm.configured ? "" :
    data.slurm.problem ? "Slurm unreachable: " + data.slurm.problem : "";
  problem.textContent = text;
  problem.hidden = !text;
  document.getElementById("updated").textContent = "updated " + data.time;
  document.body.setAttribute("data-loaded", "yes");
}

function askToken(why) {
  document.getElementById("login").hidden = false;
  document.getElementById("login-why").textContent = why;
}

let timer = null;

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  document.getElementById("forget").hidden = !token;
  const headers = {"Accept": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const answer = await fetch("/ui/overview", {headers: headers, cache: "no-store"});
    if (answer.status === 401 || answer.status === 403) {
      const body = await answer.json().catch(() => ({}));
      askToken((answer.status === 401 ? "Not authenticated: " : "Refused: ") +
               (body.description || body.message || answer.statusText));
      document.getElementById("updated").textContent = "waiting for a token";
      return;  // polled again once a token is given
    }
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    document.getElementById("login").hidden = true;
    draw(await answer.json());
  } catch (error) {
    document.getElementById("updated").textContent = "cannot reach the orchestrator (" +
      error.message + "); retrying";
  }
  timer = setTimeout(refresh, REFRESH);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token").value = "";
  refresh();
});
document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  refresh();
});
refresh();
