// `/runs/{id}`: one run, live from its feed (or as stored once it ended): state
// and verdict, thresholds, each step with its nodes, containers and charts.
"use strict";

(async () => {
  const { api, el, ids } = Loads;
  const FINISHED = ["completed", "failed", "aborted"];
  let run = null;
  const steps = new Map(); // name -> {record, nodes: Map, points: [], box}
  const thresholds = new Map();
  let chartTimer = null;

  function step(name) {
    if (!steps.has(name)) steps.set(name, { record: { step_name: name, state: "pending" }, nodes: new Map(), points: [], containers: [], box: null });
    return steps.get(name);
  }

  function thresholdKey(t) {
    return [t.step || "", t.metric, t.threshold].join("\u0000");
  }

  function renderHeader() {
    document.title = run.plan_name + " run · loads";
    document.getElementById("run-title").textContent = run.plan_name + " · run " + run.id.slice(0, 8);
    const state = document.getElementById("run-state");
    state.textContent = run.state;
    state.className = "badge " + run.state;
    const verdict = document.getElementById("run-verdict");
    verdict.textContent = run.verdict ? "verdict: " + run.verdict : "";
    verdict.className = "badge " + (run.verdict || "");
    document.getElementById("run-reason").textContent = run.verdict_reason || run.failure_reason || "";
    const times = ["created " + Loads.when(run.created_at)];
    if (run.started_at) times.push("started " + Loads.when(run.started_at));
    if (run.completed_at) times.push("ended " + Loads.when(run.completed_at) + " after " + Loads.duration(run.started_at || run.created_at, run.completed_at));
    if (run.owner) times.push("by " + run.owner);
    document.getElementById("run-times").textContent = times.join(" · ");
    const plan = document.getElementById("plan-link");
    plan.href = "/plans/" + run.plan_id;
    plan.textContent = "Plan " + run.plan_name;
    document.getElementById("abort").hidden = FINISHED.includes(run.state) || !Loads.canOperate();
    const dashboard = document.getElementById("dashboard");
    dashboard.hidden = !run.dashboard_url;
    if (run.dashboard_url) dashboard.href = run.dashboard_url;
  }

  function renderThresholds() {
    const rows = [...thresholds.values()].map((t) => el("tr", { "data-state": t.state },
      el("td", {}, el("code", {}, t.metric)), el("td", {}, el("code", {}, t.threshold)), el("td", {}, t.step || "plan"),
      el("td", {}, Loads.badge(t.state)), el("td", {}, t.value === null || t.value === undefined ? "" : Number(t.value).toFixed(3)),
      el("td", {}, Loads.when(t.first_breach_at))));
    document.querySelector("#thresholds tbody").replaceChildren(...rows);
    document.getElementById("no-thresholds").hidden = rows.length > 0;
  }

  function renderCost() {
    const cost = run.cost;
    document.getElementById("cost").hidden = !cost;
    if (!cost) return;
    const usd = (x) => (x === null || x === undefined ? "-" : "$" + Number(x).toFixed(4));
    const rows = cost.lines.map((l) => el("tr", {},
      el("td", {}, l.instance_type), el("td", {}, l.region), el("td", {}, l.market), el("td", {}, String(l.instances)),
      el("td", {}, (l.instance_seconds / 3600).toFixed(3)), el("td", {}, usd(l.usd_per_instance_hour)), el("td", {}, usd(l.usd))));
    document.querySelector("#cost-lines tbody").replaceChildren(...rows);
    const total = (cost.complete ? "Cost: " : "Cost so far: ") + usd(cost.usd) + " for " + (cost.instance_seconds / 3600).toFixed(3) +
      " instance-hours, as of " + Loads.when(cost.as_of);
    document.getElementById("cost-total").textContent = [total, ...(cost.notes || [])].join(" · ");
  }

  function containerState(c) {
    const noExit = c.exit_code === null || c.exit_code === undefined;
    if (noExit && run && FINISHED.includes(run.state)) return c.state === "removed" ? "removed" : "stopped";
    if (c.state === "started" || (!c.state && noExit)) return "running";
    return c.state || "exited";
  }

  function tail(text, lines) {
    const all = (text || "").replace(/\s+$/, "").split("\n");
    return all.slice(-lines).join("\n");
  }

  function renderSteps() {
    const container = document.getElementById("steps");
    for (const [name, s] of steps) {
      if (!s.box) {
        s.box = el("section", { class: "step card", "data-step": name });
        s.head = el("h3", {});
        s.reason = el("p", { class: "reason" });
        s.overflow = el("p", { class: "reason", "data-overflow": "" });
        s.nodeList = el("div", { class: "scroll" });
        s.charts = el("div", { class: "charts" },
          el("div", { class: "chart", "data-chart": "rate" }), el("div", { class: "chart", "data-chart": "latency" }),
          el("div", { class: "chart", "data-chart": "cpu" }));
        s.logs = el("div", { class: "logs" });
        s.box.append(s.head, s.reason, s.overflow, s.nodeList, s.charts, s.logs);
        container.append(s.box);
      }
      s.head.replaceChildren(name, " ", Loads.badge(s.record.state));
      s.box.dataset.state = s.record.state;
      s.reason.textContent = s.record.failure_reason || "";
      renderOverflow(s);
      const rows = [];
      const byNode = new Map();
      for (const c of s.containers) {
        if (!byNode.has(c.node)) byNode.set(c.node, []);
        byNode.get(c.node).push(c);
      }
      for (const node of new Set([...s.nodes.keys(), ...byNode.keys()])) {
        const cs = byNode.get(node) || [];
        rows.push(el("tr", {}, el("td", {}, node), el("td", {}, s.nodes.get(node) || ""),
          el("td", {}, cs.map((c) => el("div", {}, c.role + " " + (c.image || ""), " ", Loads.badge(containerState(c)),
            c.exit_code === null || c.exit_code === undefined ? "" : " exit " + c.exit_code)))));
      }
      s.nodeList.replaceChildren(el("table", { class: "grid" }, el("thead", {}, el("tr", {}, el("th", {}, "Node"), el("th", {}, "State"), el("th", {}, "Containers"))), el("tbody", {}, rows)));
      s.logs.replaceChildren(...s.containers.filter((c) => c.logs).map((c) => el("details", { open: true },
        el("summary", {}, "Output of " + c.role + " on " + c.node + (c.exit_code === null || c.exit_code === undefined ? "" : " (exit " + c.exit_code + ")")),
        el("pre", {}, tail(c.logs, 20)))));
    }
    scheduleCharts();
  }

  // Values its generators sent that the step did not keep: their series came past a cap.
  function renderOverflow(s) {
    const n = s.record.series_overflow || 0;
    s.overflow.hidden = n === 0;
    s.overflow.dataset.overflow = String(n);
    s.overflow.textContent = n === 0 ? "" : n + " value(s) not kept: their series came past the cap of distinct series " +
      "(metrics.max_series_per_window, metrics.max_series_per_step); the summary's series.overflow rows name the patterns. Does a metric name hold an id?";
  }

  function scheduleCharts() {
    if (chartTimer) return;
    chartTimer = setTimeout(() => {
      chartTimer = null;
      for (const s of steps.values()) if (s.box) Charts.step(s.charts, s.points, { time: "clock" });
    }, 300);
  }

  function addPoint(s, point) {
    const last = s.points.length ? s.points[s.points.length - 1].t : -Infinity;
    if (point.t > last) s.points.push(point);
    else if (!s.points.some((p) => p.t === point.t)) {
      s.points.push(point);
      s.points.sort((a, b) => a.t - b.t);
    }
  }

  async function loadSeries() {
    const series = await api("GET", "/api/v1/runs/" + ids.id + "/series");
    if (series.status !== 200) return;
    for (const s of series.body.steps) for (const p of s.points) addPoint(step(s.step), p);
    scheduleCharts();
  }

  async function loadLogs() {
    const answer = await api("GET", "/api/v1/runs/" + ids.id + "/logs");
    if (answer.status !== 200) return;
    for (const s of steps.values()) s.containers = [];
    for (const c of answer.body.containers) step(c.step_name).containers.push(c);
    renderSteps();
  }

  function takeRun(view) {
    run = view;
    for (const r of view.step_records) step(r.step_name).record = r;
    for (const t of view.thresholds || []) thresholds.set(thresholdKey(t), t);
    renderHeader();
    renderThresholds();
    renderCost();
    renderSteps();
  }

  async function refetch() {
    const answer = await api("GET", "/api/v1/runs/" + ids.id);
    if (answer.status === 200) takeRun(answer.body);
  }

  function onEvent(event) {
    switch (event.type) {
      case "snapshot":
        takeRun(event.run);
        break;
      case "run":
        run.state = event.state;
        if (event.reason) run.failure_reason = event.reason;
        renderHeader();
        // The run's last windows are stored before its final state: read them all back.
        if (FINISHED.includes(event.state)) refetch().then(loadLogs).then(loadSeries);
        break;
      case "step": {
        const s = step(event.step);
        s.record = Object.assign({}, s.record, { state: event.state, failure_reason: event.reason || s.record.failure_reason });
        renderSteps();
        break;
      }
      case "node":
        step(event.step).nodes.set(event.node, event.state);
        renderSteps();
        break;
      case "container": {
        const s = step(event.step);
        const known = s.containers.find((c) => c.docker_id === event.container);
        if (known) Object.assign(known, { state: event.state, exit_code: event.exit_code });
        else s.containers.push({ docker_id: event.container, node: event.node, role: "step", state: event.state, exit_code: event.exit_code });
        renderSteps();
        if (event.state === "removed") loadLogs();
        break;
      }
      case "metrics": {
        const s = step(event.step);
        addPoint(s, { t: event.start_ms, counters: event.counters, timers: event.timers, cpu: event.cpu || {} });
        if ((event.overflow || 0) > (s.record.series_overflow || 0)) {
          s.record.series_overflow = event.overflow;
          if (s.box) renderOverflow(s);
        }
        scheduleCharts();
        break;
      }
      case "threshold":
        thresholds.set(thresholdKey(event.threshold), event.threshold);
        renderThresholds();
        break;
      case "verdict":
        run.verdict = event.verdict;
        run.verdict_reason = event.reason;
        renderHeader();
        break;
      case "dashboard":
        run.dashboard_url = event.url;
        renderHeader();
        break;
      case "cost":
        run.cost = event.cost;
        renderCost();
        break;
      default:
        break;
    }
  }

  document.getElementById("abort").addEventListener("click", async () => {
    const button = document.getElementById("abort");
    button.disabled = true;
    const answer = await api("POST", "/api/v1/runs/" + ids.id + "/abort");
    button.disabled = false;
    if (answer.status === 0 || answer.status >= 300) Loads.flash(Loads.errorText(answer));
  });

  await Loads.whoami();
  const first = await api("GET", "/api/v1/runs/" + ids.id);
  if (first.status !== 200) {
    document.getElementById("run-title").textContent = Loads.errorText(first);
    return;
  }
  takeRun(first.body);
  const plan = await api("GET", "/api/v1/plans/" + run.plan_id);
  if (plan.status === 200 && plan.body.baseline_run_id && plan.body.baseline_run_id !== run.id) {
    const link = document.getElementById("compare-baseline");
    link.href = "/compare?a=" + run.id + "&b=" + plan.body.baseline_run_id;
    link.hidden = false;
  }
  await loadSeries();
  await loadLogs();
  Loads.feed(ids.id, onEvent);
  setInterval(() => {
    if (run && !FINISHED.includes(run.state)) loadLogs();
  }, 5000);
})();
