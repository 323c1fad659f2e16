// loads UI: what every page shares. The API with the session's token, the
// token dialog, the role's controls, the live feed with reconnection, and small
// DOM and time helpers. Data only ever becomes text nodes, never markup.
"use strict";

const Loads = (() => {
  const body = document.body;
  const ids = JSON.parse(body.dataset.ids || "{}");
  const TOKEN = "loads.token";
  let role = null;
  let asking = null;

  function token() {
    return sessionStorage.getItem(TOKEN);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function flash(message) {
    const box = document.getElementById("flash");
    box.textContent = message;
    box.hidden = !message;
  }

  // Asks for a token once; every request waiting for one gets the same answer.
  function askToken(message) {
    if (asking) return asking;
    const dialog = document.getElementById("token-dialog");
    const input = document.getElementById("token-input");
    document.getElementById("token-error").textContent = message || "";
    asking = new Promise((resolve) => {
      document.getElementById("token-form").onsubmit = (e) => {
        e.preventDefault();
        sessionStorage.setItem(TOKEN, input.value.trim());
        input.value = "";
        dialog.close();
        asking = null;
        resolve();
      };
    });
    if (!dialog.open) dialog.showModal();
    input.focus();
    return asking;
  }

  // One API call. Answers {status, body}; asks for a token on 401 and tries again.
  async function api(method, path, payload, contentType) {
    for (let attempt = 0; attempt < 4; attempt++) {
      const headers = { Accept: "application/json" };
      const t = token();
      if (t) headers.Authorization = "Bearer " + t;
      let data;
      if (payload !== undefined) {
        headers["Content-Type"] = contentType || "application/json";
        data = typeof payload === "string" ? payload : JSON.stringify(payload);
      }
      let response, text;
      try {
        response = await fetch(path, { method, headers, body: data });
        text = await response.text();
      } catch (e) {
        return { status: 0, body: { message: "the broker cannot be reached (" + e.message + ")" } };
      }
      let parsed = null;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch (_) {
        parsed = { message: text };
      }
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN);
        await askToken(parsed && parsed.message);
        continue;
      }
      return { status: response.status, body: parsed };
    }
    return { status: 401, body: { message: "no valid token was given" } };
  }

  // The role of the session's token (asking for one first when the broker
  // needs it and the session has none that is valid); hides what it may not do.
  async function whoami() {
    let answer = null;
    for (let attempt = 0; attempt < 5; attempt++) {
      answer = await api("GET", "/api/v1/whoami");
      const b = answer.body || {};
      if (answer.status !== 200 || !b.auth || b.role) break;
      const invalid = token() ? "That token is not valid here." : "";
      sessionStorage.removeItem(TOKEN);
      await askToken(invalid);
    }
    const b = (answer && answer.body) || {};
    role = b.role || null;
    body.classList.toggle("read-only", role !== "operate");
    document.getElementById("role").textContent = b.auth && role ? "token: " + role : "";
    document.getElementById("signout").hidden = !token();
    return role;
  }

  function canOperate() {
    return role === "operate";
  }

  function errorText(answer) {
    const b = answer.body || {};
    const details = (b.details || []).map((d) => (d.path ? d.path + ": " : "") + d.message);
    return [b.message || "HTTP " + answer.status].concat(details).join("\n");
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function duration(from, to) {
    if (!from) return "";
    const ms = (to ? new Date(to) : new Date()) - new Date(from);
    const s = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + r + " s";
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + (kind || text || "") }, text || "");
  }

  function runRow(run, extra) {
    return el("tr", { "data-run": run.id },
      el("td", {}, el("a", { href: "/runs/" + run.id }, run.plan_name)),
      el("td", { class: "state" }, badge(run.state)),
      el("td", { class: "verdict" }, run.verdict ? badge(run.verdict) : ""),
      el("td", {}, run.owner || ""),
      el("td", {}, when(run.started_at || run.created_at)),
      el("td", {}, duration(run.started_at, run.completed_at)),
      extra || null);
  }

  function b64url(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    bytes.forEach((b) => (binary += String.fromCharCode(b)));
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // The run's live feed: `onEvent` gets every event once, in order, across
  // reconnections (each resumes with ?since= the last seq seen).
  function feed(runId, onEvent) {
    const live = document.getElementById("live");
    let last = 0;
    let delay = 500;
    let ended = false;
    function connect() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const url = scheme + "//" + location.host + "/api/v1/runs/" + runId + "/events?since=" + last;
      const protocols = ["loads"];
      if (token()) protocols.push("bearer." + b64url(token()));
      const socket = new WebSocket(url, protocols);
      socket.onopen = () => {
        delay = 500;
        live.textContent = "live";
        live.className = "live on";
      };
      socket.onmessage = (m) => {
        const event = JSON.parse(m.data);
        if (event.type === "end") {
          ended = true;
          live.textContent = "ended";
          live.className = "live";
        }
        if (event.type === "snapshot" || event.type === "end" || event.type === "closed") {
          onEvent(event);
          return;
        }
        if (event.seq <= last) return;
        last = event.seq;
        onEvent(event);
      };
      socket.onclose = () => {
        if (ended) return;
        live.textContent = "connection lost: reconnecting…";
        live.className = "live off";
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }
    connect();
  }

  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN);
    location.reload();
  });

  return { ids, api, el, flash, whoami, canOperate, errorText, when, duration, badge, runRow, feed, token };
})();

// Shared by the pages with an import form: the file goes to the import API as it is.
function setupImport(onDone) {
  const form = document.getElementById("import-form");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = document.getElementById("import-file").files[0];
    const problems = document.getElementById("import-problems");
    problems.replaceChildren();
    if (!file) return;
    const name = file.name.toLowerCase();
    const type = name.endsWith(".toml") ? "application/toml" : name.endsWith(".yaml") || name.endsWith(".yml") ? "application/yaml" : "application/json";
    const answer = await Loads.api("POST", "/api/v1/projects/import", await file.text(), type);
    if (answer.status === 200 || answer.status === 201) {
      Loads.flash("Imported " + answer.body.project.name);
      onDone(answer.body);
      return;
    }
    const b = answer.body || {};
    problems.append(Loads.el("li", {}, b.message || "HTTP " + answer.status));
    for (const d of b.details || []) problems.append(Loads.el("li", {}, Loads.el("code", {}, d.path), ": " + d.message));
  });
}
