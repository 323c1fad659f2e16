// `/plans/{id}`: the plan's steps, environment, thresholds, baseline and runs;
// start a run, fork the plan, set a run as the baseline.
"use strict";

(async () => {
  const { api, el, ids } = Loads;
  let plan = null;

  function envList(env) {
    // Secret references (`secret:NAME`) are shown as the references they are.
    return Object.entries(env || {}).map(([k, v]) => {
      const text = typeof v === "string" ? v : JSON.stringify(v);
      return el("div", {}, el("dt", {}, k), el("dd", { class: text.startsWith("secret:") ? "secret" : "" }, text));
    });
  }

  function thresholdRows(thresholds, step) {
    const rows = [];
    for (const [metric, list] of Object.entries(thresholds || {})) {
      for (const t of [].concat(list)) {
        const text = typeof t === "string" ? t : t.threshold;
        rows.push(el("tr", {}, el("td", {}, el("code", {}, metric)), el("td", {}, el("code", {}, text)), el("td", {}, step || "plan"),
          el("td", {}, typeof t === "object" && t.abort_on_fail ? "yes" : "no")));
      }
    }
    return rows;
  }

  async function load() {
    const answer = await api("GET", "/api/v1/plans/" + ids.id);
    if (answer.status !== 200) {
      document.getElementById("plan-name").textContent = Loads.errorText(answer);
      return;
    }
    plan = answer.body;
    document.title = plan.name + " · loads";
    document.getElementById("plan-name").textContent = plan.name;
    document.getElementById("plan-description").textContent = plan.description || "";
    const project = document.getElementById("project-link");
    project.href = "/projects/" + plan.project_id;
    project.textContent = "Project";
    // A region, a list of regions (equal shares), or regions with their percentages.
    const regionText = (r) => typeof r === "string" ? r
      : Array.isArray(r) ? r.join(", ") + " (equal shares)"
      : Object.entries(r).map(([name, share]) => name + " " + share + "%").join(", ");
    document.querySelector("#steps tbody").replaceChildren(...plan.steps.map((s) => {
      const spec = s;
      return el("tr", {},
        el("td", {}, spec.name, spec.service ? " (service)" : ""),
        el("td", {}, el("code", {}, spec.container_name)),
        el("td", {}, spec.instance_count),
        el("td", {}, spec.instance_type),
        el("td", {}, regionText(spec.instance_region)),
        el("td", {}, spec.run_delay + " s"),
        el("td", {}, spec.run_max_time + " s"),
        el("td", {}, el("dl", { class: "env" }, envList(spec.environment_data))));
    }));
    document.getElementById("plan-env").replaceChildren(...envList(plan.environment_data));
    const rows = thresholdRows(plan.thresholds);
    for (const s of plan.steps) rows.push(...thresholdRows(s.thresholds, s.name));
    document.querySelector("#thresholds tbody").replaceChildren(...rows);
    const baseline = document.getElementById("baseline");
    baseline.replaceChildren(plan.baseline_run_id ? el("a", { href: "/runs/" + plan.baseline_run_id }, "run " + plan.baseline_run_id.slice(0, 8)) : "None.");
    await runs();
  }

  async function runs() {
    const answer = await api("GET", "/api/v1/runs?limit=100&plan_id=" + ids.id);
    if (answer.status !== 200) return;
    document.querySelector("#runs tbody").replaceChildren(...answer.body.items.map((run) => {
      const row = Loads.runRow(run, el("td", { class: "operate" },
        run.completed_at && run.state === "completed" && plan.baseline_run_id !== run.id
          ? el("button", { type: "button", class: "small", onclick: () => setBaseline(run.id) }, "Set as baseline")
          : plan.baseline_run_id === run.id ? "baseline" : ""));
      return row;
    }));
  }

  async function setBaseline(runId) {
    const answer = await api("POST", "/api/v1/plans/" + ids.id + "/baseline", { run_id: runId });
    if (answer.status === 200 || answer.status === 201) load();
    else Loads.flash(Loads.errorText(answer));
  }

  document.getElementById("start-open").addEventListener("click", () => {
    const form = document.getElementById("start-form");
    form.hidden = !form.hidden;
    if (!form.hidden) document.getElementById("start-owner").focus();
  });
  document.getElementById("start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("start-error");
    error.textContent = "";
    const env = {};
    const lines = document.getElementById("start-env").value.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    for (const [i, line] of lines.entries()) {
      const at = line.indexOf("=");
      if (at < 1) {
        error.textContent = "line " + (i + 1) + ": expected KEY=VALUE";
        return;
      }
      env[line.slice(0, at).trim()] = line.slice(at + 1);
    }
    const body = { env };
    const owner = document.getElementById("start-owner").value.trim();
    if (owner) body.owner = owner;
    const answer = await api("POST", "/api/v1/plans/" + ids.id + "/runs", body);
    if (answer.status === 201 || answer.status === 200 || answer.status === 202) location.href = "/runs/" + answer.body.id;
    else error.textContent = Loads.errorText(answer);
  });
  document.getElementById("fork").addEventListener("click", async () => {
    const answer = await api("POST", "/api/v1/plans/" + ids.id + "/fork", {});
    if (answer.status === 201 || answer.status === 200) location.href = "/plans/" + answer.body.id;
    else Loads.flash(Loads.errorText(answer));
  });

  await Loads.whoami();
  await load();
  setInterval(runs, 3000);
})();
