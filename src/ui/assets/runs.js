// `/`: every run, newest first, filtered by plan and state, refreshed every 2 s.
"use strict";

(async () => {
  const { api, el, ids } = Loads;
  const tbody = document.querySelector("#runs tbody");
  const planFilter = document.getElementById("filter-plan");
  const stateFilter = document.getElementById("filter-state");
  if (ids.missing) {
    const missing = document.getElementById("missing");
    missing.textContent = "Not found: " + ids.missing;
    missing.hidden = false;
  }
  const params = new URLSearchParams(location.search);
  stateFilter.value = params.get("state") || "";

  async function projects() {
    const answer = await api("GET", "/api/v1/projects?limit=1000");
    if (answer.status !== 200) return;
    const list = document.getElementById("projects");
    list.replaceChildren(...answer.body.items.map((p) => el("li", {}, el("a", { href: "/projects/" + p.id }, p.name), " · " + p.plan_count + " plan(s)")));
    const chosen = params.get("plan") || planFilter.value;
    const options = [el("option", { value: "" }, "any")];
    for (const p of answer.body.items) {
      const detail = await api("GET", "/api/v1/projects/" + p.id);
      if (detail.status !== 200) continue;
      for (const plan of detail.body.plans) options.push(el("option", { value: plan.id }, p.name + " / " + plan.name));
    }
    planFilter.replaceChildren(...options);
    planFilter.value = chosen;
  }

  async function refresh() {
    const query = new URLSearchParams({ limit: "100" });
    if (planFilter.value) query.set("plan_id", planFilter.value);
    if (stateFilter.value) query.set("state", stateFilter.value);
    const answer = await api("GET", "/api/v1/runs?" + query);
    if (answer.status !== 200) {
      Loads.flash(Loads.errorText(answer));
      return;
    }
    tbody.replaceChildren(...answer.body.items.map((run) => Loads.runRow(run)));
    document.getElementById("empty").hidden = answer.body.items.length > 0;
  }

  function filtered() {
    const query = new URLSearchParams();
    if (planFilter.value) query.set("plan", planFilter.value);
    if (stateFilter.value) query.set("state", stateFilter.value);
    history.replaceState(null, "", query.toString() ? "?" + query : "/");
    refresh();
  }
  planFilter.addEventListener("change", filtered);
  stateFilter.addEventListener("change", filtered);
  setupImport(() => projects());

  await Loads.whoami();
  await projects();
  await refresh();
  setInterval(refresh, 2000);
})();
