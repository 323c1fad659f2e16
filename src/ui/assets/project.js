// `/projects/{id}`: the project's plans and runs; import a project file.
"use strict";

(async () => {
  const { api, el, ids } = Loads;
  async function load() {
    const answer = await api("GET", "/api/v1/projects/" + ids.id);
    if (answer.status !== 200) {
      document.getElementById("project-name").textContent = Loads.errorText(answer);
      return;
    }
    const project = answer.body;
    const plans = answer.body.plans;
    document.title = project.name + " · loads";
    document.getElementById("project-name").textContent = project.name;
    document.getElementById("project-description").textContent = project.home_page || "";
    const rows = [];
    for (const plan of plans) {
      const detail = await api("GET", "/api/v1/plans/" + plan.id);
      const baseline = detail.status === 200 && detail.body.baseline_run_id;
      rows.push(el("tr", {},
        el("td", {}, el("a", { href: "/plans/" + plan.id }, plan.name)),
        el("td", {}, plan.step_count),
        el("td", {}, baseline ? el("a", { href: "/runs/" + baseline }, "run " + baseline.slice(0, 8)) : "none")));
    }
    document.querySelector("#plans tbody").replaceChildren(...rows);
    const runs = await api("GET", "/api/v1/runs?limit=100&project_id=" + ids.id);
    if (runs.status === 200) document.querySelector("#runs tbody").replaceChildren(...runs.body.items.map((r) => Loads.runRow(r)));
  }
  setupImport((report) => {
    if (report.project.id !== ids.id) location.href = "/projects/" + report.project.id;
    else load();
  });
  await Loads.whoami();
  await load();
  setInterval(load, 5000);
})();
