// The billing overview's spend-by-day chart: one uPlot bar chart drawn from the figures the server put in the
// element's data attributes (days, and amounts in major units). The figures a person reads are in the table the
// server renders beside it; this module only draws, and redraws when the window is resized.
(function () {
  "use strict";

  var figure = document.querySelector("[data-spend-chart]");
  var el = figure && figure.querySelector("[data-days]");
  if (!el || typeof window.uPlot !== "function") { return; }
  var days = (el.getAttribute("data-days") || "").split(",").filter(Boolean);
  var amounts = (el.getAttribute("data-amounts") || "").split(",").filter(Boolean).map(Number);
  var currency = el.getAttribute("data-currency") || "";
  if (!days.length || days.length !== amounts.length) { return; }
  var xs = days.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
  // The x axis is the whole month, half a day beyond its first and last days: with the days so far alone, uPlot
  // stretches a few days (on the 1st, one) over a span of years.
  var first = new Date(xs[0] * 1000);
  var monthEnd = Date.UTC(first.getUTCFullYear(), first.getUTCMonth() + 1, 1) / 1000 - 86400;
  var xRange = [xs[0] - 43200, monthEnd + 43200];
  var chart = null;

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function money(v) { return v === null || v === undefined ? "" : v.toFixed(2) + " " + currency; }

  function draw() {
    var text = cssVar("--muted", "#4d5969");
    var grid = cssVar("--border-soft", "#e4e8ee");
    var accent = cssVar("--accent", "#0a58a8");
    var axis = {stroke: text, grid: {stroke: grid, width: 1}, ticks: {stroke: grid, width: 1}};
    var width = Math.max(240, el.clientWidth);
    if (chart) { chart.destroy(); }
    el.textContent = "";
    chart = new window.uPlot({
      width: width,
      height: 220,
      legend: {show: false},
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true, range: function () { return xRange; }}, y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.15 : 1]; }}},
      series: [
        {value: function (u, v) { return v ? new Date(v * 1000).toISOString().slice(0, 10) : ""; }},
        {
          label: "Spend",
          stroke: accent,
          fill: accent,
          width: 0,
          value: function (u, v) { return money(v); },
          paths: window.uPlot.paths.bars({size: [0.7, 40]}),
          points: {show: false}
        }
      ],
      axes: [
        Object.assign({}, axis, {values: function (u, splits) {
          return splits.map(function (s) { return new Date(s * 1000).toISOString().slice(5, 10); });
        }}),
        Object.assign({}, axis, {size: 60, values: function (u, splits) {
          return splits.map(function (s) { return s.toFixed(s < 10 ? 2 : 0); });
        }})
      ]
    }, [xs, amounts], el);
    figure.setAttribute("data-drawn", String(xs.length));
  }

  draw();
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(draw, 150);
  });
})();
