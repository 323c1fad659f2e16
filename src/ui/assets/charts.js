// Charts of a step's windows with plotly.js (served by the broker): request
// rate, p50/p95/p99 latency per timer, counters, and node CPU. A point is one
// flush window merged over the step's nodes: {t: start ms, counters, timers, cpu}.
"use strict";

const Charts = (() => {
  // Zoom by dragging, back by double-clicking; no tool bar over the titles.
  const config = { displaylogo: false, responsive: true, displayModeBar: false };

  function layout(title, yTitle, xType) {
    return {
      title: { text: title, font: { size: 14 } },
      margin: { l: 50, r: 10, t: 34, b: 36 },
      height: 240,
      xaxis: { type: xType, title: { text: xType === "date" ? "" : "seconds since start" } },
      yaxis: { title: { text: yTitle }, rangemode: "tozero" },
      legend: { orientation: "h", y: -0.25 },
      uirevision: "keep",
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
    };
  }

  // The traces of several series (each {label, points, origin}) for one chart kind.
  function traces(kind, series, xOf) {
    const out = [];
    for (const s of series) {
      const prefix = s.label ? s.label + " " : "";
      const names = new Set();
      for (const p of s.points) {
        const source = kind === "cpu" ? p.cpu : kind === "latency" ? p.timers : Object.assign({}, p.counters, p.timers);
        for (const n of Object.keys(source || {})) names.add(n);
      }
      for (const name of [...names].sort()) {
        const stats = kind === "latency" ? ["p50", "p95", "p99"] : [null];
        for (const stat of stats) {
          const x = [], y = [];
          for (const p of s.points) {
            let v;
            if (kind === "cpu") v = p.cpu && p.cpu[name];
            else if (kind === "latency") v = p.timers && p.timers[name] && p.timers[name].count ? p.timers[name][stat] : undefined;
            else v = p.timers && p.timers[name] ? p.timers[name].count : p.counters ? p.counters[name] : undefined;
            if (v === undefined || v === null) continue;
            x.push(xOf(p, s));
            y.push(v);
          }
          out.push({ type: "scatter", mode: "lines+markers", marker: { size: 4 }, name: prefix + name + (stat ? " " + stat : ""), x, y });
        }
      }
    }
    return out;
  }

  function draw(node, data, title, yTitle, xType) {
    if (!node) return;
    const points = data.reduce((n, t) => n + t.x.length, 0);
    node.dataset.points = String(points);
    if (points === 0) {
      if (node.dataset.drawn) Plotly.purge(node);
      delete node.dataset.drawn;
      node.replaceChildren(Loads.el("p", { class: "muted" }, title + ": no samples yet"));
      return;
    }
    if (!node.dataset.drawn) {
      node.replaceChildren();
      node.dataset.drawn = "1";
    }
    Plotly.react(node, data, layout(title, yTitle, xType), config);
  }

  // One step's three charts, on wall-clock time (the browser's zone).
  function step(box, points) {
    const series = [{ label: "", points }];
    const x = (p) => new Date(p.t);
    draw(box.querySelector("[data-chart=rate]"), traces("rate", series, x), "Rate (per second)", "per s", "date");
    draw(box.querySelector("[data-chart=latency]"), traces("latency", series, x), "Latency", "ms", "date");
    draw(box.querySelector("[data-chart=cpu]"), traces("cpu", series, x), "Node CPU", "%", "date");
  }

  // Two runs' series overlaid on time since each one's start.
  function overlay(box, series) {
    const x = (p, s) => (p.t - s.origin) / 1000;
    draw(box.querySelector("[data-chart=rate]"), traces("rate", series, x), "Rate (per second)", "per s", "linear");
    draw(box.querySelector("[data-chart=latency]"), traces("latency", series, x), "Latency", "ms", "linear");
  }

  return { step, overlay };
})();
