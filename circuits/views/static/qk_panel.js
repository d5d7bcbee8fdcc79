// QK panel of the attribution graph page (`sparse-circuits trace --qk`): a self-contained
// addition that reads data.qk from the page's embedded JSON (#graph-data) and draws its own
// panel. Click an edge: its head loadings (layer.head, the part of the edge through that head,
// and the bypass of each layer). Click a head: its top (query source, key source) pairs of the
// attention score at (target position, source position), with atlas labels. Fragment:
// #qk-edge=<i> opens edge i. A click on a graph node (an element with data-index) lists that
// node's edges. Uses no names of the page's own script.
(function () {
  const holder = document.getElementById("graph-data");
  if (!holder) { return; }
  const qk = JSON.parse(holder.textContent).qk;
  if (!qk || !qk.edges || !qk.edges.length) { return; }
  const style = document.createElement("style");
  style.textContent =
    "#qk-panel{position:fixed;left:8px;bottom:8px;max-width:46vw;max-height:45vh;overflow:auto;" +
    "background:#fff;border:1px solid #bbb;border-radius:6px;padding:6px 10px;font:12px sans-serif;" +
    "box-shadow:0 2px 8px rgba(0,0,0,.15);z-index:20}#qk-panel h3{margin:2px 0 6px;font-size:13px}" +
    "#qk-panel table{border-collapse:collapse}#qk-panel td,#qk-panel th{padding:1px 6px;text-align:left}" +
    "#qk-panel tr.qk-click{cursor:pointer}#qk-panel tr.qk-click:hover{background:#eef}" +
    "#qk-panel .qk-pos{color:#1a6}#qk-panel .qk-neg{color:#b33}#qk-panel button{font-size:11px}";
  document.head.appendChild(style);
  const panel = document.createElement("div");
  panel.id = "qk-panel";
  document.body.appendChild(panel);
  const heads = {};
  (qk.heads || []).forEach(function (h) { heads[[h.layer, h.head, h.query, h.key].join(",")] = h; });
  function num(v) { return '<span class="' + (v >= 0 ? "qk-pos" : "qk-neg") + '">' + (v >= 0 ? "+" : "") + v.toPrecision(3) + "</span>"; }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; }); }
  function pos(id) { const parts = id.split("_"); return Number(parts[parts.length - 1]); }
  const page = JSON.parse(holder.textContent);
  function nodeId(n) {  // circuit-tracer node ids, as in the JSON export
    if (n.kind === "feature") { return n.layer + "_" + n.feature + "_" + n.pos; }
    if (n.kind === "error") { return n.layer + "_-1_" + n.pos; }
    if (n.kind === "token") { return "E_" + n.feature + "_" + n.pos; }
    return (page.n_layers + 1) + "_" + n.feature + "_" + n.pos;
  }
  let focus = null;  // node id whose edges are listed (null: all)
  function list() {
    let rows = qk.edges.map(function (e, i) {
      if (focus !== null && e.source !== focus && e.target !== focus) { return ""; }
      return '<tr class="qk-click" data-edge="' + i + '"><td>' + esc(e.source) + " &rarr; " + esc(e.target) + "</td><td>" + num(e.weight) + "</td></tr>";
    }).join("");
    const title = focus === null ? "Attention: cross-position edges (click for heads)" : "Attention: cross-position edges of " + esc(focus) + ' <button data-back="all">all</button>';
    panel.innerHTML = "<h3>" + title + "</h3><table><tr><th>edge</th><th>weight</th></tr>" + rows + "</table>";
  }
  // a click on a node of the graph lists that node's edges here
  document.addEventListener("click", function (event) {
    const hit = event.target.closest && event.target.closest("[data-index]");
    if (!hit || panel.contains(hit) || !page.nodes) { return; }
    const n = page.nodes[Number(hit.getAttribute("data-index"))];
    if (n) { focus = nodeId(n); list(); }
  });
  function edge(i) {
    const e = qk.edges[i];
    const q = pos(e.target), k = pos(e.source);
    let rows = e.heads.map(function (h) {
      const key = [h[0], h[1], q, k].join(",");
      const cls = heads[key] ? ' class="qk-click" data-head="' + key + '" data-edge="' + i + '"' : "";
      return "<tr" + cls + "><td>L" + h[0] + ".H" + h[1] + "</td><td>" + num(h[2]) + "</td><td>" + (heads[key] ? "QK pairs &rsaquo;" : "") + "</td></tr>";
    }).join("");
    const bypass = e.bypass.map(function (v, l) { return "L" + l + " " + num(v); }).join(" · ");
    panel.innerHTML = '<button data-back="list">&lsaquo; edges</button><h3>' + esc(e.source) + " &rarr; " + esc(e.target) + " = " + num(e.weight) + "</h3>" +
      "<table><tr><th>head</th><th>loading</th><th></th></tr>" + rows + "</table><p>bypass per layer: " + bypass + "</p>";
  }
  function head(key, i) {
    const h = heads[key];
    const rows = h.pairs.map(function (p) { return "<tr><td>" + esc(p[0]) + "</td><td>" + esc(p[1]) + "</td><td>" + num(p[2]) + "</td></tr>"; }).join("");
    panel.innerHTML = '<button data-back="' + i + '">&lsaquo; heads</button><h3>L' + h.layer + ".H" + h.head + ": score at query @" + h.query + ", key @" + h.key + " = " + num(h.score) + "</h3>" +
      "<table><tr><th>query-side source</th><th>key-side source</th><th>term</th></tr>" + rows + "</table>";
  }
  panel.addEventListener("click", function (event) {
    const back = event.target.closest("[data-back]");
    if (back) {
      if (back.dataset.back === "all") { focus = null; list(); } else if (back.dataset.back === "list") { list(); } else { edge(Number(back.dataset.back)); }
      return;
    }
    const row = event.target.closest("tr.qk-click");
    if (!row) { return; }
    if (row.dataset.head) { head(row.dataset.head, Number(row.dataset.edge)); } else { edge(Number(row.dataset.edge)); }
  });
  function fromFragment() {  // the page's #click=<node> (applied before this script ran)
    const clicked = /(?:^#|&)click=(\d+)/.exec(window.location.hash);
    const n = clicked ? page.nodes && page.nodes[Number(clicked[1])] : null;
    focus = n ? nodeId(n) : null;
    list();
    const match = /qk-edge=(\d+)/.exec(window.location.hash);
    if (match && qk.edges[Number(match[1])]) { edge(Number(match[1])); }
  }
  fromFragment();
  window.addEventListener("hashchange", fromFragment);
})();
