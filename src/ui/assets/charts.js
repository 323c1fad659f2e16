// Charts of a step's windows with plotly.js (served by the broker): request
// rate, p50/p95/p99 latency per timer, counters, and node CPU. A point is one
// flush window merged over the step's nodes: {t: start ms, counters, timers, cpu}.
// Metric names come from generators: plotly reads tags in trace names, so names
// are escaped; a chart draws the busiest series and names how many more there are.
"use strict";

const Charts = (() => {
  // Series drawn in one chart at most (a latency series is three traces).
  const MAX_SERIES = 20;

  // Text plotly shows as it is: its labels read HTML-like tags and entities.
  function text(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

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

  // How much of `name` a point holds, to pick the busiest series.
  function volume(kind, p, name) {
    if (kind === "cpu") return 1;
    const timer = p.timers && p.timers[name];
    if (timer) return timer.count || 0;
    return kind === "latency" ? 0 : Math.abs((p.counters && p.counters[name]) || 0);
  }

  // The traces of several series (each {label, points, origin}) for one chart kind;
  // `omitted` counts the series not drawn.
  function traces(kind, series, xOf) {
    const out = [];
    out.omitted = 0;
    for (const s of series) {
      const prefix = s.label ? s.label + " " : "";
      const names = new Map();
      for (const p of s.points) {
        const source = kind === "cpu" ? p.cpu : kind === "latency" ? p.timers : Object.assign({}, p.counters, p.timers);
        for (const n of Object.keys(source || {})) names.set(n, (names.get(n) || 0) + volume(kind, p, n));
      }
      const busiest = [...names.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, MAX_SERIES);
      out.omitted += names.size - busiest.length;
      for (const name of busiest.map((e) => e[0]).sort()) {
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
          const label = text(prefix + name + (stat ? " " + stat : ""));
          out.push({ type: "scatter", mode: "lines+markers", marker: { size: 4 }, name: label, x, y });
        }
      }
    }
    return out;
  }

  function draw(node, data, title, yTitle, xType) {
    if (!node) return;
    const points = data.reduce((n, t) => n + t.x.length, 0);
    node.dataset.points = String(points);
    node.dataset.omitted = String(data.omitted || 0);
    if (data.omitted) title += " (the " + MAX_SERIES + " busiest series; " + data.omitted + " more not drawn)";
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
