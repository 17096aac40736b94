// The monitoring tab's charts: fetches the chart data of the chosen range (JSON from the console, never another
// host) and draws one uPlot chart per [data-chart] element. A null in the data is a gap where the broker did not
// answer: the line breaks there, it never falls to zero. The figures a person reads are in the tables the server
// renders beside each chart; this module only draws. It redraws whenever htmx refreshes the current values
// (every minute) and when the window is resized.
(function () {
  "use strict";

  var root = document.querySelector("[data-monitoring]");
  if (!root || typeof window.uPlot !== "function") { return; }
  var source = root.getAttribute("data-source");
  var charts = {};
  var latest = null;

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function palette() {
    return {
      text: cssVar("--muted", "#4d5969"),
      grid: cssVar("--border-soft", "#e4e8ee"),
      series: [cssVar("--accent", "#0a58a8"), cssVar("--ok", "#0b6b3f")],
      limit: cssVar("--danger", "#b3261e")
    };
  }

  function scaled(value, unit) {
    if (value === null || value === undefined) { return ""; }
    var abs = Math.abs(value);
    if (unit === "bytes/s") {
      if (abs >= 1e9) { return (value / 1e9).toFixed(1) + " GB/s"; }
      if (abs >= 1e6) { return (value / 1e6).toFixed(1) + " MB/s"; }
      if (abs >= 1e3) { return (value / 1e3).toFixed(1) + " kB/s"; }
      return (value === Math.round(value) ? String(value) : value.toFixed(1)) + " B/s";
    }
    if (abs >= 1e6) { return (value / 1e6).toFixed(1) + "M"; }
    if (abs >= 1e4) { return (value / 1e3).toFixed(0) + "k"; }
    if (abs >= 100 || value === Math.round(value)) { return String(Math.round(value)); }
    if (abs >= 10) { return value.toFixed(1); }
    return value.toFixed(2);
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }

  // 24-hour UTC times; the day as well once a range spans more than a day.
  function clock(seconds, span) {
    var d = new Date(seconds * 1000);
    var time = two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
    if (span <= 86400) { return time; }
    var day = two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate());
    return time === "00:00" ? day : day + " " + time;
  }

  function hasData(el, data) {
    return (el.getAttribute("data-series") || "").split(",").some(function (name) {
      return (data.series[name] || []).some(function (v) { return v !== null; });
    });
  }

  function options(el, data, width) {
    var colours = palette();
    var unit = el.getAttribute("data-unit");
    var labels = (el.getAttribute("data-labels") || "").split("|");
    var series = [{}];
    (el.getAttribute("data-series") || "").split(",").forEach(function (name, i) {
      series.push({
        label: labels[i] || name,
        stroke: colours.series[i % colours.series.length],
        width: 2,
        spanGaps: false,
        points: {size: 5}
      });
    });
    if (el.hasAttribute("data-limit")) {
      series.push({label: "Tier limit", stroke: colours.limit, width: 1.5, dash: [6, 4], points: {show: false}});
    }
    var axis = {stroke: colours.text, grid: {stroke: colours.grid, width: 1}, ticks: {stroke: colours.grid, width: 1}};
    return {
      width: width,
      height: 220,
      legend: {show: false},
      cursor: {drag: {x: false, y: false}},
      // Times in UTC, as everywhere else in the console.
      tzDate: function (ts) { return window.uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: {
        x: {time: true, range: function () { return [data.from, data.to]; }},
        y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}
      },
      axes: [
        Object.assign({}, axis, {
          label: "Time (UTC)",
          labelSize: 24,
          values: function (u, ticks) { return ticks.map(function (t) { return clock(t, data.to - data.from); }); }
        }),
        Object.assign({}, axis, {
          label: unit,
          labelSize: 24,
          size: 64,
          values: function (u, ticks) { return ticks.map(function (t) { return scaled(t, unit); }); }
        })
      ],
      series: series
    };
  }

  function columns(el, data) {
    var out = [data.x];
    (el.getAttribute("data-series") || "").split(",").forEach(function (name) {
      out.push(data.series[name] || data.x.map(function () { return null; }));
    });
    if (el.hasAttribute("data-limit")) {
      var limit = Number(el.getAttribute("data-limit"));
      out.push(data.x.map(function () { return limit; }));
    }
    return out;
  }

  function draw(data) {
    latest = data;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      var key = el.getAttribute("data-chart");
      var width = Math.max(240, el.clientWidth);
      if (charts[key]) { charts[key].destroy(); delete charts[key]; }
      // Nothing to draw in this range: the table below says so, an empty frame would say nothing more.
      el.classList.toggle("chart-empty", !hasData(el, data));
      if (!hasData(el, data)) { return; }
      charts[key] = new window.uPlot(options(el, data, width), columns(el, data), el);
    });
    root.setAttribute("data-drawn", String(data.x.length));
  }

  function load() {
    fetch(source, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("chart data: HTTP " + response.status); }
        return response.json();
      })
      .then(draw)
      .catch(function () {
        root.setAttribute("data-drawn", "failed");
        root.querySelectorAll("[data-chart]").forEach(function (el) {
          el.textContent = "The chart could not be loaded; the table below has the figures.";
        });
      });
  }

  var pending = null;
  function loadSoon() {
    clearTimeout(pending);
    pending = setTimeout(load, 50);
  }

  // htmx swapped in fresh current values: fetch the matching chart data.
  document.body.addEventListener("htmx:afterSettle", function (event) {
    if (event.target && event.target.closest && event.target.closest("[data-monitoring]")) { loadSoon(); }
  });

  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { if (latest) { draw(latest); } }, 150);
  });

  load();
})();
