// One layer of an atlas: a filterable table of its features; clicking a row (or #f=<index>
// in the URL) shows the feature's card, built by feature_card.js from the embedded records.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("atlas-data").textContent);
  const tbody = document.getElementById("features");
  const cardBox = document.getElementById("card");
  const filter = document.getElementById("filter");
  const rows = [];

  data.records.forEach(function (r, i) {
    const tr = document.createElement("tr");
    tr.setAttribute("data-feature", r.feature);
    [String(r.feature), r.label, (100 * r.frequency).toPrecision(3) + "%", r.max.toPrecision(3)].forEach(function (t) {
      const td = document.createElement("td");
      td.textContent = t;
      tr.appendChild(td);
    });
    tr.addEventListener("click", function () { show(i); });
    tbody.appendChild(tr);
    rows.push(tr);
  });

  function show(i) {
    rows.forEach(function (tr, j) { tr.classList.toggle("selected", j === i); });
    while (cardBox.firstChild) cardBox.removeChild(cardBox.firstChild);
    cardBox.appendChild(window.renderFeatureCard(data.records[i], data.vocab));
  }

  filter.addEventListener("input", function () {
    const q = filter.value.toLowerCase();
    data.records.forEach(function (r, i) {
      rows[i].hidden = q !== "" && (r.label.toLowerCase().indexOf(q) < 0 && String(r.feature) !== q);
    });
  });

  function applyFragment() {
    const m = /f=(\d+)/.exec(window.location.hash);
    if (!m) return;
    const i = data.records.findIndex(function (r) { return r.feature === Number(m[1]); });
    if (i >= 0) show(i);
  }
  applyFragment();
  window.addEventListener("hashchange", applyFragment);
})();
