// `/compare?a=RUN&b=RUN`: the comparison of two runs (the API's compare table)
// and their rate and latency charts overlaid on time since each run's start.
"use strict";

(async () => {
  const { api, el, ids } = Loads;
  const fmt = (v) => (v === null || v === undefined ? "" : Number.isInteger(v) || Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));
  await Loads.whoami();
  const [a, b] = await Promise.all([api("GET", "/api/v1/runs/" + ids.a), api("GET", "/api/v1/runs/" + ids.b)]);
  for (const [key, answer] of [["a", a], ["b", b]]) {
    const link = document.getElementById("link-" + key);
    link.href = "/runs/" + ids[key];
    link.textContent = answer.status === 200 ? answer.body.plan_name + " run " + ids[key].slice(0, 8) : Loads.errorText(answer);
    document.getElementById("verdict-" + key).textContent = answer.status === 200 ? answer.body.verdict || answer.body.state : "";
  }
  const comparison = await api("GET", "/api/v1/runs/" + ids.a + "/compare?to=" + ids.b);
  if (comparison.status !== 200) {
    document.getElementById("compare-summary").textContent = Loads.errorText(comparison);
    return;
  }
  const c = comparison.body;
  const broken = c.rules.filter((r) => r.regressed);
  document.getElementById("compare-summary").textContent = c.rules.length
    ? (c.regressed ? "Regressed: " + broken.map((r) => r.step + " " + r.metric + " " + r.rule).join("; ") : "No rule regressed (" + c.rules.length + " checked).")
    : "The plan has no regression rules; the figures are shown as they are.";
  const rows = [];
  for (const s of c.steps) {
    for (const m of s.metrics) {
      for (const stat of ["count", "rate", "p50", "p95", "p99", "max"]) {
        const x = m.run && m.run[stat], y = m.other && m.other[stat];
        if ((x === null || x === undefined) && (y === null || y === undefined)) continue;
        const d = m.delta[stat];
        rows.push(el("tr", {}, el("td", {}, s.step), el("td", {}, el("code", {}, m.metric)), el("td", {}, stat), el("td", {}, fmt(x)), el("td", {}, fmt(y)),
          el("td", {}, d ? fmt(d.absolute) : ""), el("td", {}, d && d.relative !== null && d.relative !== undefined ? (d.relative * 100).toFixed(1) + " %" : "")));
      }
    }
  }
  document.querySelector("#compare tbody").replaceChildren(...rows);

  const [sa, sb] = await Promise.all([api("GET", "/api/v1/runs/" + ids.a + "/series"), api("GET", "/api/v1/runs/" + ids.b + "/series")]);
  if (sa.status !== 200 || sb.status !== 200) return;
  const origin = (answer, run) => {
    const start = run.status === 200 && run.body.started_at ? Date.parse(run.body.started_at) : null;
    const first = Math.min(...answer.body.steps.flatMap((s) => s.points.map((p) => p.t)));
    return start || first || 0;
  };
  const oa = origin(sa, a), ob = origin(sb, b);
  const names = new Set([...sa.body.steps.map((s) => s.step), ...sb.body.steps.map((s) => s.step)]);
  const charts = document.getElementById("charts");
  for (const name of names) {
    const box = el("section", { class: "step card", "data-step": name }, el("h3", {}, name),
      el("div", { class: "charts" }, el("div", { class: "chart", "data-chart": "rate" }), el("div", { class: "chart", "data-chart": "latency" })));
    charts.append(box);
    const of = (answer) => (answer.body.steps.find((s) => s.step === name) || { points: [] }).points;
    Charts.overlay(box, [{ label: "A", points: of(sa), origin: oa }, { label: "B", points: of(sb), origin: ob }]);
  }
})();
