// The Studio's light JS: poll a fragment of the page while something runs, draw the
// plotly charts whose figures the server put in <script type="application/json">.
(function () {
  "use strict";
  function poll(el) {
    var url = el.getAttribute("data-poll"), every = +el.getAttribute("data-every") || 2000;
    function tick() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) { el.innerHTML = html; }
          if (el.querySelector("[data-busy]") || el.hasAttribute("data-always")) {
            setTimeout(tick, every);
          }
        })
        .catch(function () { setTimeout(tick, every * 2); });
    }
    if (el.querySelector("[data-busy]") || el.hasAttribute("data-always")) { setTimeout(tick, every); }
  }
  function charts() {
    if (!window.Plotly) { return; }
    document.querySelectorAll("script[data-figure]").forEach(function (node) {
      var figure = JSON.parse(node.textContent), target = document.getElementById(node.getAttribute("data-figure"));
      if (target) {
        window.Plotly.newPlot(target, figure.data, figure.layout, {responsive: true, displaylogo: false});
        target.setAttribute("data-drawn", "1");
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
    charts();
  });
})();
