// Interactive attribution graph (no dependencies). Reads the JSON in #graph-data and draws
// an inline SVG: x = token position, y = layer (tokens at the bottom, logits on top).
// Hover: tooltip. Click: the node's inputs and outputs are highlighted, the rest dimmed.
// Slider: feature/error nodes whose cumulative-influence share exceeds the threshold are
// not rendered. A clicked feature shows its atlas card (feature_card.js) when data.cards has it. Fragment: #threshold=<x>&click=<node index>&hover=<node index>.
(function () {
  "use strict";
  // the HTML parser puts the inline <svg> in the SVG namespace; new elements reuse it
  const SVG_NS = document.getElementById("graph").namespaceURI;
  const ALWAYS_SHOWN = { token: true, logit: true };
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const nodes = data.nodes;
  const edges = data.edges; // [source, target, weight]
  const svg = document.getElementById("graph");
  const tooltip = document.getElementById("tooltip");
  const slider = document.getElementById("threshold");
  const sliderValue = document.getElementById("threshold-value");
  const nodeCount = document.getElementById("node-count");
  const details = document.getElementById("details");

  // ---- geometry (x in column units from circuits.views.draw.graph_layout) --------------------
  const nRows = data.n_layers + 2;
  const colWidth = 90;
  const rowHeight = 110;
  const margin = { left: 60, right: 30, top: 50, bottom: 60 };
  const width = margin.left + margin.right + data.width * colWidth;
  const height = margin.top + margin.bottom + (nRows - 1) * rowHeight;
  const px = function (n) { return margin.left + n.x * colWidth; };
  const py = function (n) { return margin.top + (nRows - 1 - n.row) * rowHeight; };
  // markers shrink in crowded cells so that neighbours do not overlap
  const radius = function (n) { return Math.max(2.5, Math.min(8, (n.spacing * colWidth) / 2.4)); };
  const maxWeight = edges.reduce(function (m, e) { return Math.max(m, Math.abs(e[2])); }, 0) || 1;

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const axes = el("g", { class: "axes" }, svg);
  const edgeLayer = el("g", { class: "edges" }, svg);
  const nodeLayer = el("g", { class: "nodes" }, svg);
  for (let r = 0; r < nRows; r++) {
    const y = margin.top + (nRows - 1 - r) * rowHeight;
    el("line", { class: "row-line", x1: margin.left, x2: width - margin.right, y1: y, y2: y }, axes);
    const name = r === 0 ? "emb" : r === nRows - 1 ? "logit" : "L" + (r - 1);
    el("text", { class: "row-label", x: margin.left - 10, y: y + 4 }, axes).textContent = name;
  }
  data.token_strs.forEach(function (tok, p) {
    const x = margin.left + data.column_center[p] * colWidth;
    const label = el("text", { class: "token-label", x: x, y: height - margin.bottom + 28 }, axes);
    label.textContent = JSON.stringify(tok).slice(1, -1);
  });

  // ---- state ----------------------------------------------------------------------------
  let threshold = 1.0;
  let selected = null;
  let shown = [];

  function isShown(n) {
    return ALWAYS_SHOWN[n.kind] === true || n.influence <= threshold;
  }

  function shapeFor(n, i) {
    const x = px(n), y = py(n), r = radius(n);
    let shape;
    if (n.kind === "feature") {
      shape = el("circle", { cx: x, cy: y, r: r });
    } else if (n.kind === "error") {
      shape = el("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r });
    } else if (n.kind === "token") {
      const d = r * 1.3;
      shape = el("polygon", { points: [x, y - d, x + d, y, x, y + d, x - d, y].join(" ") });
    } else {
      const d = r * 1.3;
      shape = el("polygon", { points: [x, y - d, x + d, y + d * 0.8, x - d, y + d * 0.8].join(" ") });
    }
    shape.setAttribute("id", "node-" + i);
    shape.setAttribute("class", "node " + n.kind);
    shape.setAttribute("data-index", i);
    return shape;
  }

  function render() {
    while (edgeLayer.firstChild) edgeLayer.removeChild(edgeLayer.firstChild);
    while (nodeLayer.firstChild) nodeLayer.removeChild(nodeLayer.firstChild);
    const visible = nodes.map(isShown);
    shown = [];
    edges.forEach(function (e, k) {
      if (!visible[e[0]] || !visible[e[1]]) return;
      const a = nodes[e[0]], b = nodes[e[1]];
      const strength = Math.abs(e[2]) / maxWeight;
      el("line", {
        class: "edge " + (e[2] > 0 ? "positive" : "negative"),
        x1: px(a), y1: py(a), x2: px(b), y2: py(b),
        "stroke-width": (0.4 + 4 * strength).toFixed(2),
        "stroke-opacity": (0.25 + 0.6 * strength).toFixed(2),
        "data-source": e[0], "data-target": e[1], "data-edge": k,
      }, edgeLayer);
    });
    nodes.forEach(function (n, i) {
      if (!visible[i]) return;
      nodeLayer.appendChild(shapeFor(n, i));
      shown.push(i);
    });
    nodeCount.textContent = String(shown.length);
    if (selected !== null && !visible[selected]) selected = null;
    highlight();
  }

  // ---- selection ------------------------------------------------------------------------
  function fmt(v) {
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(3);
  }

  function describe(i) {
    const n = nodes[i];
    const what = n.kind === "logit" ? "probability" : n.kind === "error" ? "error norm" : "activation";
    let text = n.label + "\n" + n.kind + ", layer " + n.layer + ", position " + n.pos;
    if (n.kind !== "token") text += "\n" + what + " " + fmt(n.activation);
    if (!ALWAYS_SHOWN[n.kind]) text += "\ncumulative influence " + fmt(n.influence);
    return text;
  }

  function linkList(title, items) {
    const section = document.createElement("section");
    const h = document.createElement("h3");
    h.textContent = title + " (" + items.length + ")";
    section.appendChild(h);
    const ol = document.createElement("ol");
    items.sort(function (a, b) { return Math.abs(b[1]) - Math.abs(a[1]); }).slice(0, 30).forEach(function (it) {
      const li = document.createElement("li");
      li.className = it[1] > 0 ? "positive" : "negative";
      li.textContent = fmt(it[1]) + "  " + nodes[it[0]].label;
      ol.appendChild(li);
    });
    section.appendChild(ol);
    return section;
  }

  function highlight() {
    const inputs = {}, outputs = {};
    const edgeEls = edgeLayer.querySelectorAll(".edge");
    edgeEls.forEach(function (line) {
      const s = Number(line.getAttribute("data-source")), t = Number(line.getAttribute("data-target"));
      const touches = selected !== null && (s === selected || t === selected);
      line.classList.toggle("highlight", touches);
      line.classList.toggle("dimmed", selected !== null && !touches);
      if (selected !== null && t === selected) inputs[s] = Number(edges[line.getAttribute("data-edge")][2]);
      if (selected !== null && s === selected) outputs[t] = Number(edges[line.getAttribute("data-edge")][2]);
    });
    shown.forEach(function (i) {
      const shape = document.getElementById("node-" + i);
      shape.classList.toggle("selected", i === selected);
      shape.classList.toggle("input", i in inputs);
      shape.classList.toggle("output", i in outputs);
      const related = i === selected || i in inputs || i in outputs;
      shape.classList.toggle("dimmed", selected !== null && !related);
    });
    while (details.firstChild) details.removeChild(details.firstChild);
    if (selected === null) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = "Click a node to see its inputs and outputs.";
      details.appendChild(p);
      return;
    }
    const pre = document.createElement("pre");
    pre.textContent = describe(selected);
    details.appendChild(pre);
    const asList = function (obj) { return Object.keys(obj).map(function (k) { return [Number(k), obj[k]]; }); };
    const card = featureCard(nodes[selected]);
    if (card) details.appendChild(card);
    details.appendChild(linkList("inputs", asList(inputs)));
    details.appendChild(linkList("outputs", asList(outputs)));
  }

  function featureCard(n) {
    const cards = data.cards || {};
    const record = n.kind === "feature" ? cards[n.layer + "/" + n.feature] : undefined;
    if (!record || typeof window.renderFeatureCard !== "function") return null;
    return window.renderFeatureCard(record, data.vocab);
  }

  nodeLayer.addEventListener("click", function (event) {
    const target = event.target.closest(".node");
    if (!target) return;
    event.stopPropagation();
    const i = Number(target.getAttribute("data-index"));
    selected = selected === i ? null : i;
    highlight();
  });
  svg.addEventListener("click", function () {
    if (selected !== null) { selected = null; highlight(); }
  });

  // ---- tooltip --------------------------------------------------------------------------
  nodeLayer.addEventListener("mouseover", function (event) {
    const target = event.target.closest(".node");
    if (!target) return;
    tooltip.textContent = describe(Number(target.getAttribute("data-index")));
    tooltip.hidden = false;
  });
  nodeLayer.addEventListener("mousemove", function (event) {
    tooltip.style.left = event.pageX + 14 + "px";
    tooltip.style.top = event.pageY + 14 + "px";
  });
  nodeLayer.addEventListener("mouseout", function () { tooltip.hidden = true; });

  // ---- slider and fragment --------------------------------------------------------------
  slider.addEventListener("input", function () {
    threshold = Number(slider.value);
    sliderValue.textContent = threshold.toFixed(2);
    render();
  });

  document.getElementById("summary").textContent =
    (data.model_name ? data.model_name + " · " : "") +
    (data.dictionary_names.length ? data.dictionary_names.join(", ") + " · " : "") +
    nodes.length + " nodes, " + edges.length + " of " + data.n_edges_total + " edges embedded" +
    (data.node_threshold !== null && data.node_threshold !== undefined ? " · pruned at " + data.node_threshold : "");

  render();

  function applyFragment() {
    const params = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      const eq = part.indexOf("=");
      if (eq > 0) params[decodeURIComponent(part.slice(0, eq))] = decodeURIComponent(part.slice(eq + 1));
    });
    if (params.threshold !== undefined && !isNaN(Number(params.threshold))) {
      slider.value = params.threshold; // step="any": the value is kept exactly
      slider.dispatchEvent(new Event("input", { bubbles: true }));
    }
    if (params.hover !== undefined) {
      const shape = document.getElementById("node-" + Number(params.hover));
      if (shape) shape.dispatchEvent(new MouseEvent("mouseover", { bubbles: true, view: window }));
    }
    if (params.click !== undefined) {
      const shape = document.getElementById("node-" + Number(params.click));
      if (shape) {
        if (selected !== null) { selected = null; highlight(); }
        shape.dispatchEvent(new MouseEvent("click", { bubbles: true, cancelable: true, view: window }));
      }
    }
  }
  applyFragment();
  window.addEventListener("hashchange", applyFragment);
})();
