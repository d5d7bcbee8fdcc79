// Interactive attribution graph page (no dependencies, no network). Reads the JSON in
// #graph-data ({graphs: [one or two graphs]}) and draws each graph as an inline SVG: x = token
// position, y = layer (tokens at the bottom, logits on top).
//
// Layout: a column per position, as wide as the larger of what its token label needs on screen
// and what its nodes need at the current zoom (positions without nodes collapse to their label);
// "fit" picks the zoom at which the columns fill the pane. Zoom (wheel) and pan (drag) change
// the node positions; labels keep their size and are re-truncated to the room they have.
// Hover: the node's card and neighbours in the side panel. Click: pin (and select). Sliders:
// node influence and edge weight thresholds, re-pruned live. The state (thresholds, search,
// pins, groups, view) lives in the URL fragment.
//
// Plugins (e.g. an attention panel) use window.sparseCircuitsPage: see docs/graph-page.md.
(function () {
  "use strict";
  // the HTML parser puts inline <svg> elements in the SVG namespace; new elements reuse it
  const SVG_NS = document.querySelector("svg").namespaceURI;
  const ALWAYS_SHOWN = { token: true, logit: true };
  const pageData = JSON.parse(document.getElementById("graph-data").textContent);
  const graphs = pageData.graphs;
  const panes = Array.prototype.slice.call(document.querySelectorAll(".graph-pane"));
  const $ = function (id) { return document.getElementById(id); };

  // ---- sizes (screen pixels) -------------------------------------------------------------
  const TOKEN_FONT = "11px monospace", LABEL_FONT = "10px sans-serif";
  const SLOT = 64; // a node's room at zoom 1 (its label gets about twice that, staggered)
  const LINE = 13; // a vertical label's column
  const MIN_ROW = 18; // rows closer than LABEL_ROW draw only the labels below their nodes
  const LABEL_ROW = 34;
  const LEFT = 34, RIGHT = 8;
  const measureCtx = document.createElement("canvas").getContext("2d");
  const widthCache = {};
  function textWidth(text, font) {
    const key = font + "|" + text;
    if (!(key in widthCache)) { measureCtx.font = font; widthCache[key] = measureCtx.measureText(text).width; }
    return widthCache[key];
  }
  // the longest prefix of text (with an ellipsis) that fits in `room` pixels; "" if none does
  function fitText(text, room, font) {
    if (textWidth(text, font) <= room) return text;
    let lo = 0, hi = text.length;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (textWidth(text.slice(0, mid) + "…", font) <= room) lo = mid; else hi = mid - 1;
    }
    return lo >= 2 ? text.slice(0, lo) + "…" : "";
  }
  function display(tok) {
    return String(tok).replace(/\n/g, "⏎").replace(/\t/g, "→").replace(/\r/g, "␍");
  }
  function fmt(v) {
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(3);
  }
  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }
  function html(tag, cls, text, parent) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  // ---- state ------------------------------------------------------------------------------
  const state = {
    node: 1, edge: 1, q: "", view: "full",
    pins: graphs.map(function () { return []; }), // node ids, in pin order
    groups: graphs.map(function () { return []; }), // {name, ids}
    selected: graphs.map(function () { return null; }), // node index
  };
  let hover = null; // {g, i}
  const view = { z: 1, tx: 0, ty: 0 };
  graphs.forEach(function (G) {
    G.index = {};
    G.nodes.forEach(function (n, i) { G.index[n.id] = i; });
    G.nPos = Math.max(G.token_strs.length, 1 + G.nodes.reduce(function (m, n) { return Math.max(m, n.pos); }, 0));
  });
  const nRows = Math.max.apply(null, graphs.map(function (G) { return G.n_layers; })) + 2;
  const nPos = Math.max.apply(null, graphs.map(function (G) { return G.nPos; }));
  const listeners = {};
  function emit(name, detail) {
    (listeners[name] || []).slice().forEach(function (fn) { fn(detail); });
    window.dispatchEvent(new CustomEvent("sparsecircuits:" + name, { detail: detail }));
  }

  // ---- what is shown ------------------------------------------------------------------------
  // The same rule as circuits.views.html_page.visible: nodes by influence share, then the
  // strongest edges among them up to the edge threshold's share of |weight|, then (edge < 1)
  // feature and error nodes left without an edge are dropped.
  function fullVisible(G) {
    const vis = G.nodes.map(function (n) { return ALWAYS_SHOWN[n.kind] === true || n.influence <= state.node; });
    const order = [];
    G.edges.forEach(function (e, k) { if (vis[e[0]] && vis[e[1]]) order.push(k); });
    order.sort(function (a, b) { return Math.abs(G.edges[b][2]) - Math.abs(G.edges[a][2]) || a - b; });
    let total = 0;
    order.forEach(function (k) { total += Math.abs(G.edges[k][2]); });
    const kept = [];
    let cum = 0;
    for (let j = 0; j < order.length; j++) {
      if (state.edge < 1 && !(cum < state.edge * total)) break;
      kept.push(order[j]);
      cum += Math.abs(G.edges[order[j]][2]);
    }
    if (state.edge < 1) {
      const touched = {};
      kept.forEach(function (k) { touched[G.edges[k][0]] = true; touched[G.edges[k][1]] = true; });
      G.nodes.forEach(function (n, i) { if (!ALWAYS_SHOWN[n.kind] && !touched[i]) vis[i] = false; });
    }
    return { vis: vis, edges: kept };
  }

  // The drawn units: nodes, or in the pinned view the pinned nodes with each group merged into
  // one supernode (its edges the sums of its members' edges).
  function units(G, g) {
    if (state.view !== "pinned") {
      const fv = fullVisible(G);
      const list = [];
      G.nodes.forEach(function (n, i) { if (fv.vis[i]) list.push({ members: [i], node: n, key: String(i) }); });
      return { list: list, edges: fv.edges.map(function (k) { const e = G.edges[k]; return { s: String(e[0]), t: String(e[1]), w: e[2], k: k }; }) };
    }
    const unitOf = {};
    const list = [];
    state.groups[g].forEach(function (grp, gi) {
      const members = grp.ids.map(function (id) { return G.index[id]; }).filter(function (i) { return i !== undefined; });
      if (!members.length) return;
      const key = "group-" + gi;
      members.forEach(function (i) { unitOf[i] = key; });
      list.push({ members: members, group: grp.name, key: key });
    });
    state.pins[g].forEach(function (id) {
      const i = G.index[id];
      if (i === undefined || unitOf[i] !== undefined) return;
      unitOf[i] = String(i);
      list.push({ members: [i], node: G.nodes[i], key: String(i) });
    });
    const sums = {};
    G.edges.forEach(function (e, k) {
      const s = unitOf[e[0]], t = unitOf[e[1]];
      if (s === undefined || t === undefined || s === t) return;
      const key = s + ">" + t;
      if (!sums[key]) sums[key] = { s: s, t: t, w: 0, k: k };
      sums[key].w += e[2];
    });
    return { list: list, edges: Object.keys(sums).map(function (key) { return sums[key]; }) };
  }

  // a supernode sits at its members' mean row, in the column of their last position
  function unitPlace(G, u) {
    if (u.node) return { row: u.node.layer + 1, pos: u.node.pos, kind: u.node.kind };
    let row = 0, pos = 0;
    u.members.forEach(function (i) { row += G.nodes[i].layer + 1; pos = Math.max(pos, G.nodes[i].pos); });
    return { row: Math.round(row / u.members.length), pos: pos, kind: "supernode" };
  }

  function matches(n) {
    const q = state.q.toLowerCase();
    return q !== "" && (n.label.toLowerCase().indexOf(q) >= 0 || n.short.toLowerCase().indexOf(q) >= 0);
  }

  // ---- layout ---------------------------------------------------------------------------------
  function tokenText(G, p) { return fitTextChars(display(G.token_strs[p] || ""), 14); }
  function fitTextChars(text, n) { return text.length <= n ? text : text.slice(0, n - 1) + "…"; }

  // Columns: min screen width (labels) and width per unit of zoom (nodes); rows fill the height.
  function computeLayout(drawn, paneWidth, paneHeight) {
    const minW = [], need = [];
    let longestToken = 0;
    for (let p = 0; p < nPos; p++) {
      let w = 0, logits = 0;
      graphs.forEach(function (G) { w = Math.max(w, textWidth(tokenText(G, p), TOKEN_FONT)); });
      longestToken = Math.max(longestToken, w);
      drawn.forEach(function (d) {
        let crowd = {}, nl = 0;
        d.units.list.forEach(function (u) {
          const pl = unitPlace(d.G, u);
          if (pl.pos !== p) return;
          if (pl.kind === "logit") { nl++; return; }
          if (pl.kind === "token") return;
          crowd[pl.row] = (crowd[pl.row] || 0) + 1;
        });
        Object.keys(crowd).forEach(function (r) { need[p] = Math.max(need[p] || 0, crowd[r]); });
        logits = Math.max(logits, nl);
      });
      minW.push(Math.max(0, logits * LINE));
      need[p] = need[p] || 0;
    }
    const room = paneWidth - LEFT - RIGHT;
    let sideBySide = 0; // the narrowest layout with horizontal token labels
    for (let p = 0; p < nPos; p++) {
      let w = 0;
      graphs.forEach(function (G) { w = Math.max(w, textWidth(tokenText(G, p), TOKEN_FONT)); });
      sideBySide += Math.max(w + 8, minW[p]);
    }
    const vertical = sideBySide > room;
    const tokenW = [];
    for (let p = 0; p < nPos; p++) {
      let w = 0;
      graphs.forEach(function (G) { w = Math.max(w, textWidth(tokenText(G, p), TOKEN_FONT)); });
      tokenW.push(vertical ? LINE : w + 8);
      minW[p] = Math.max(minW[p], tokenW[p]);
    }
    const total = function (k) { let s = 0; for (let p = 0; p < nPos; p++) s += Math.max(minW[p], k * need[p] * SLOT); return s; };
    // the zoom at which the columns fill the pane (at most 2: sparse graphs stay compact)
    let lo = 0, hi = 2;
    if (total(hi) <= room) lo = hi;
    else for (let it = 0; it < 40; it++) { const mid = (lo + hi) / 2; if (total(mid) <= room) lo = mid; else hi = mid; }
    if (total(0) >= room) lo = 0.1; // labels alone overflow the pane: nodes still get 6 px
    const k = lo * view.z;
    const widths = [];
    for (let p = 0; p < nPos; p++) widths.push(Math.max(minW[p], k * need[p] * SLOT));
    const left = [];
    let x = LEFT + Math.max(0, (room - total(lo)) / 2) * (view.z === 1 ? 1 : 0);
    for (let p = 0; p < nPos; p++) { left.push(x + view.tx); x += widths[p]; }
    let logitText = 0;
    drawn.forEach(function (d) {
      d.units.list.forEach(function (u) {
        if (u.node && u.node.kind === "logit") logitText = Math.max(logitText, textWidth(logitLabel(u.node), LABEL_FONT));
      });
    });
    const top = Math.min(logitText, 150) + 16;
    const bottom = (vertical ? longestToken : 12) + 30;
    const rowH = Math.max(MIN_ROW, (paneHeight - top - bottom) / Math.max(nRows - 1, 1)) * Math.sqrt(view.z);
    return {
      vertical: vertical, widths: widths, left: left, tokenW: tokenW, top: top + view.ty, rowH: rowH,
      width: paneWidth, height: paneHeight, bottomY: top + view.ty + (nRows - 1) * rowH,
      fitK: lo,
    };
  }
  function logitLabel(n) { return n.short; }
  function rowY(L, r) { return L.top + (nRows - 1 - r) * L.rowH; }

  // ---- drawing ----------------------------------------------------------------------------------
  function render() {
    const drawn = graphs.map(function (G, g) { return { G: G, g: g, units: units(G, g) }; });
    const box = panes[0].querySelector(".graph-area").getBoundingClientRect();
    const L = computeLayout(drawn, Math.max(box.width, 200), Math.max(box.height, 200));
    drawn.forEach(function (d) { drawGraph(d, L); });
    lastLayout = L;
    updateCounts(drawn);
    renderPanel();
    writeFragment();
    drawn.forEach(function (d) { emit("render", { graph: d.g }); });
  }
  let lastLayout = null;

  function drawGraph(d, L) {
    const G = d.G, g = d.g;
    const svg = panes[g].querySelector("svg");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("width", L.width);
    svg.setAttribute("height", L.height);
    svg.setAttribute("viewBox", "0 0 " + L.width + " " + L.height);
    const axes = el("g", { class: "axes" }, svg);
    const edgeLayer = el("g", { class: "edges" }, svg);
    const nodeLayer = el("g", { class: "nodes" }, svg);
    const labelLayer = el("g", { class: "labels" }, svg);
    for (let r = 0; r < nRows; r++) {
      const y = rowY(L, r);
      el("line", { class: "row-line", x1: LEFT, x2: L.width - RIGHT, y1: y, y2: y }, axes);
      const name = r === 0 ? "emb" : r === nRows - 1 ? "out" : "L" + (r - 1);
      el("text", { class: "row-label", x: LEFT - 4, y: y + 4 }, axes).textContent = name;
    }
    const tokenRow = rowY(L, 0);
    for (let p = 0; p < nPos; p++) {
      const cx = L.left[p] + L.widths[p] / 2;
      const text = tokenText(G, p);
      const attrs = { class: "token-label", "data-pos": p, x: cx, y: tokenRow + 22 };
      if (L.vertical) { // reads upwards, ending under the token's node
        attrs.class = "token-label vertical";
        attrs.transform = "rotate(-90 " + cx + " " + (tokenRow + 12) + ")";
        attrs.x = cx; attrs.y = tokenRow + 12 + 4;
      }
      const t = el("text", attrs, axes);
      t.textContent = text;
      if (state.q && text.toLowerCase().indexOf(state.q.toLowerCase()) >= 0) t.classList.add("match");
    }

    // positions of the units: cells spread across their column
    const place = {};
    const cells = {};
    d.units.list.forEach(function (u) {
      const pl = unitPlace(G, u);
      const key = pl.row + "/" + pl.pos;
      (cells[key] = cells[key] || []).push(u);
      u.place = pl;
    });
    Object.keys(cells).forEach(function (key) {
      const list = cells[key];
      list.forEach(function (u, j) {
        const p = u.place.pos, c = list.length;
        const slot = (L.widths[p] * 0.92) / c;
        place[u.key] = {
          x: L.left[p] + L.widths[p] * 0.04 + slot * (j + 0.5), y: rowY(L, u.place.row),
          slot: slot, j: j, r: Math.max(2.5, Math.min(6.5, slot / 2.6, L.rowH / 3.4)),
        };
      });
    });

    // labelled units of a row alternate below and above their nodes; each label gets the room
    // up to its nearest neighbours on the same side, so that labels never overlap
    const byRow = {};
    d.units.list.forEach(function (u) {
      if (u.node && (u.node.kind === "token" || u.node.kind === "error" || u.node.kind === "logit")) return;
      (byRow[u.place.row] = byRow[u.place.row] || []).push(u);
    });
    Object.keys(byRow).forEach(function (r) {
      const row = byRow[r].sort(function (a, b) { return place[a.key].x - place[b.key].x; });
      row.forEach(function (u, j) {
        const at = place[u.key];
        at.below = j % 2 === 0;
        const prev = j >= 2 ? place[row[j - 2].key].x : -Infinity, next = j + 2 < row.length ? place[row[j + 2].key].x : Infinity;
        at.room = Math.min(at.x - prev, next - at.x, 2 * (L.width - RIGHT - at.x), 400) - 5;
      });
    });

    let maxW = 0;
    d.units.edges.forEach(function (e) { maxW = Math.max(maxW, Math.abs(e.w)); });
    maxW = maxW || 1;
    d.units.edges.sort(function (a, b) { return Math.abs(a.w) - Math.abs(b.w); });
    d.units.edges.forEach(function (e) {
      const a = place[e.s], b = place[e.t];
      if (!a || !b) return;
      const strength = Math.abs(e.w) / maxW;
      el("line", {
        class: "edge " + (e.w > 0 ? "positive" : "negative"),
        x1: a.x.toFixed(1), y1: a.y.toFixed(1), x2: b.x.toFixed(1), y2: b.y.toFixed(1),
        "stroke-width": (0.5 + 4 * strength).toFixed(2),
        "stroke-opacity": (0.25 + 0.6 * strength).toFixed(2),
        "data-source": e.s, "data-target": e.t, "data-weight": e.w,
      }, edgeLayer);
    });

    const groupOf = {};
    state.groups[g].forEach(function (grp) { grp.ids.forEach(function (id) { groupOf[id] = grp.name; }); });
    const pinned = {};
    state.pins[g].forEach(function (id) { pinned[id] = true; });
    d.units.list.forEach(function (u) {
      const at = place[u.key];
      const shape = u.node ? shapeFor(u.node, at) : el("rect", {
        x: at.x - 9, y: at.y - 7, width: 18, height: 14, rx: 4,
      });
      shape.setAttribute("id", "node-" + g + "-" + u.key);
      shape.setAttribute("data-graph", g);
      shape.setAttribute("data-key", u.key);
      if (u.node) {
        shape.setAttribute("data-index", u.members[0]);
        shape.setAttribute("data-id", u.node.id);
        shape.setAttribute("class", "node " + u.node.kind);
        if (pinned[u.node.id]) shape.classList.add("pinned");
        if (groupOf[u.node.id] !== undefined) shape.classList.add("grouped");
        if (matches(u.node)) shape.classList.add("match");
      } else {
        shape.setAttribute("class", "node supernode");
        shape.setAttribute("data-members", u.members.join(","));
        shape.setAttribute("data-group", u.group);
      }
      nodeLayer.appendChild(shape);
      drawLabel(u, at, L, labelLayer, g);
    });
    highlight(g);
  }

  function shapeFor(n, at) {
    const x = at.x, y = at.y, r = at.r;
    if (n.kind === "feature") return el("circle", { cx: x, cy: y, r: r });
    if (n.kind === "error") return el("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r });
    const d = Math.max(r, 4.5) * 1.3;
    if (n.kind === "token") return el("polygon", { points: [x, y - d, x + d, y, x, y + d, x - d, y].join(" ") });
    return el("polygon", { points: [x, y - d, x + d, y + d * 0.8, x - d, y + d * 0.8].join(" ") });
  }

  // Feature, error and supernode labels alternate below and above their nodes, so each has
  // two slots of room; logit labels stand vertically above the logits; tokens have the axis.
  function drawLabel(u, at, L, layer, g) {
    if (u.node && (u.node.kind === "token" || u.node.kind === "error")) return;
    let text, attrs;
    if (u.node && u.node.kind === "logit") {
      text = fitText(logitLabel(u.node), L.top - view.ty - 10, LABEL_FONT);
      const y = at.y - 10;
      attrs = { class: "node-label logit-label", x: at.x + 3.5, y: y, transform: "rotate(-90 " + at.x + " " + y + ")" };
    } else {
      if (!at.below && L.rowH < LABEL_ROW) return; // no room above: zoom in to see it
      const name = u.node ? u.node.short : u.group;
      text = fitText(name, at.room, LABEL_FONT);
      const below = at.below;
      attrs = { class: "node-label", x: at.x, y: below ? at.y + at.r + 10 : at.y - at.r - 3, "text-anchor": "middle" };
    }
    if (!text) return;
    attrs["data-key"] = u.key;
    attrs["data-graph"] = g;
    const t = el("text", attrs, layer);
    t.textContent = text;
  }

  // hovered (else selected) node: its inputs and outputs highlighted, the rest dimmed
  function highlight(g) {
    const svg = panes[g].querySelector("svg");
    const focus = hover && hover.g === g ? String(hover.i) : state.selected[g] !== null ? String(state.selected[g]) : null;
    const inputs = {}, outputs = {};
    svg.querySelectorAll(".edge").forEach(function (line) {
      const s = line.getAttribute("data-source"), t = line.getAttribute("data-target");
      const touches = focus !== null && (s === focus || t === focus);
      line.classList.toggle("highlight", touches);
      line.classList.toggle("dimmed", focus !== null && !touches);
      if (focus !== null && t === focus) inputs[s] = true;
      if (focus !== null && s === focus) outputs[t] = true;
    });
    svg.querySelectorAll(".node").forEach(function (shape) {
      const key = shape.getAttribute("data-key");
      shape.classList.toggle("selected", state.selected[g] !== null && key === String(state.selected[g]));
      shape.classList.toggle("input", key in inputs);
      shape.classList.toggle("output", key in outputs);
      shape.classList.toggle("dimmed", focus !== null && key !== focus && !(key in inputs) && !(key in outputs));
    });
  }

  function updateCounts(drawn) {
    const nodesShown = drawn.map(function (d) { return d.units.list.length; });
    const edgesShown = drawn.map(function (d) { return d.units.edges.length; });
    $("node-count").textContent = nodesShown.join(" | ");
    $("edge-count").textContent = edgesShown.join(" | ");
    let found = 0;
    drawn.forEach(function (d) { d.units.list.forEach(function (u) { if (u.node && matches(u.node)) found++; }); });
    $("match-count").textContent = state.q ? found + " found" : "";
  }

  // ---- side panel -------------------------------------------------------------------------------
  function describe(G, i) {
    const n = G.nodes[i];
    const what = n.kind === "logit" ? "probability" : n.kind === "error" ? "error norm" : "activation";
    let text = n.label + "\n" + n.kind + ", layer " + n.layer + ", position " + n.pos;
    if (n.kind !== "token") text += "\n" + what + " " + fmt(n.activation);
    if (!ALWAYS_SHOWN[n.kind]) text += "\ncumulative influence " + fmt(n.influence);
    return text;
  }

  function neighbourList(G, title, items) {
    const section = html("section", "links");
    html("h3", "", title + " (" + items.length + ")", section);
    const ol = html("ol", "", undefined, section);
    items.sort(function (a, b) { return Math.abs(b[1]) - Math.abs(a[1]); }).slice(0, 15).forEach(function (it) {
      html("li", it[1] > 0 ? "positive" : "negative", fmt(it[1]) + "  " + G.nodes[it[0]].label, ol);
    });
    return section;
  }

  function renderDetails() {
    const details = $("details");
    while (details.firstChild) details.removeChild(details.firstChild);
    let g = null, i = null;
    if (hover) { g = hover.g; i = hover.i; } else {
      state.selected.forEach(function (s, k) { if (s !== null && g === null) { g = k; i = s; } });
    }
    if (g === null || i === null || !graphs[g].nodes[i]) {
      html("p", "hint", "Hover over a node for its card; click to pin it.", details);
      return;
    }
    const G = graphs[g];
    html("pre", "describe", (graphs.length > 1 ? "[" + G.name + "] " : "") + describe(G, i), details);
    const n = G.nodes[i];
    const record = n.kind === "feature" ? (G.cards || {})[n.layer + "/" + n.feature] : undefined;
    if (record) {
      const score = record.interpretability_score !== undefined ? record.interpretability_score : record.score;
      if (score !== undefined && score !== null) {
        html("div", "interp-score", "interpretability score " + (typeof score === "number" ? fmt(score) : String(score)), details);
      }
      if (typeof window.renderFeatureCard === "function") details.appendChild(window.renderFeatureCard(record, G.vocab));
    }
    const inputs = [], outputs = [];
    G.edges.forEach(function (e) {
      if (e[1] === i) inputs.push([e[0], e[2]]);
      if (e[0] === i) outputs.push([e[1], e[2]]);
    });
    details.appendChild(neighbourList(G, "inputs", inputs));
    details.appendChild(neighbourList(G, "outputs", outputs));
  }

  function renderPins() {
    const box = $("pins");
    while (box.firstChild) box.removeChild(box.firstChild);
    graphs.forEach(function (G, g) {
      const grouped = {};
      state.groups[g].forEach(function (grp) { grp.ids.forEach(function (id) { grouped[id] = true; }); });
      state.pins[g].forEach(function (id) {
        const i = G.index[id];
        if (i === undefined) return;
        const row = html("div", "pin-row", undefined, box);
        const check = html("input", "pin-check", undefined, row);
        check.type = "checkbox";
        check.checked = !grouped[id];
        check.setAttribute("data-graph", g);
        check.setAttribute("data-id", id);
        html("span", "pin-name", (graphs.length > 1 ? G.name + ": " : "") + G.nodes[i].short + " (" + id + ")", row);
        const x = html("button", "unpin", "×", row);
        x.title = "unpin";
        x.addEventListener("click", function () { togglePin(g, i); });
      });
      state.groups[g].forEach(function (grp, gi) {
        const row = html("div", "group-row", undefined, box);
        html("b", "", grp.name, row);
        html("span", "", " " + grp.ids.length + " nodes" + (graphs.length > 1 ? " (" + G.name + ")" : ""), row);
        const x = html("button", "ungroup", "ungroup", row);
        x.addEventListener("click", function () { state.groups[g].splice(gi, 1); render(); });
      });
    });
    const any = state.pins.some(function (p) { return p.length; });
    $("pin-tools").hidden = !any;
  }

  function renderPanel() { renderDetails(); renderPins(); }

  // ---- actions ------------------------------------------------------------------------------------
  function togglePin(g, i) {
    const id = graphs[g].nodes[i].id;
    const at = state.pins[g].indexOf(id);
    if (at >= 0) {
      state.pins[g].splice(at, 1);
      state.groups[g].forEach(function (grp) { grp.ids = grp.ids.filter(function (x) { return x !== id; }); });
      state.groups[g] = state.groups[g].filter(function (grp) { return grp.ids.length > 0; });
    } else {
      state.pins[g].push(id);
    }
  }

  function groupChecked(name) {
    graphs.forEach(function (G, g) {
      const ids = [];
      document.querySelectorAll(".pin-check").forEach(function (c) {
        if (c.checked && Number(c.getAttribute("data-graph")) === g) ids.push(c.getAttribute("data-id"));
      });
      if (ids.length < 1) return;
      state.groups[g].forEach(function (grp) { grp.ids = grp.ids.filter(function (x) { return ids.indexOf(x) < 0; }); });
      state.groups[g] = state.groups[g].filter(function (grp) { return grp.ids.length > 0; });
      state.groups[g].push({ name: name || "group " + (state.groups[g].length + 1), ids: ids });
    });
    render();
  }

  panes.forEach(function (pane, g) {
    const svg = pane.querySelector("svg");
    svg.addEventListener("click", function (event) {
      if (dragged) return;
      const target = event.target.closest(".node");
      const line = event.target.closest(".edge");
      if (target && target.hasAttribute("data-index")) {
        const i = Number(target.getAttribute("data-index"));
        togglePin(g, i);
        state.selected[g] = state.selected[g] === i ? null : i;
        emit("nodeclick", { graph: g, index: i, id: graphs[g].nodes[i].id, node: graphs[g].nodes[i] });
        render();
      } else if (line) {
        emit("edgeclick", {
          graph: g, source: line.getAttribute("data-source"), target: line.getAttribute("data-target"),
          weight: Number(line.getAttribute("data-weight")),
        });
      } else if (!target && state.selected[g] !== null) {
        state.selected[g] = null;
        render();
      }
    });
    svg.addEventListener("mouseover", function (event) {
      const target = event.target.closest(".node");
      if (!target || !target.hasAttribute("data-index")) return;
      hover = { g: g, i: Number(target.getAttribute("data-index")) };
      highlight(g);
      renderDetails();
      emit("nodehover", { graph: g, index: hover.i, id: graphs[g].nodes[hover.i].id });
    });
    svg.addEventListener("mouseout", function (event) {
      if (!event.target.closest(".node") || !hover) return;
      hover = null;
      highlight(g);
      renderDetails();
    });
    // zoom about the cursor, pan by dragging
    svg.addEventListener("wheel", function (event) {
      event.preventDefault();
      const rect = svg.getBoundingClientRect();
      zoomAt(event.clientX - rect.left, event.clientY - rect.top, Math.exp(-event.deltaY * 0.0015));
    }, { passive: false });
    svg.addEventListener("mousedown", function (event) {
      if (event.target.closest(".node")) return;
      drag = { x: event.clientX, y: event.clientY, tx: view.tx, ty: view.ty };
      dragged = false;
    });
  });
  let drag = null, dragged = false;
  window.addEventListener("mousemove", function (event) {
    if (!drag) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) dragged = true;
    if (!dragged) return;
    view.tx = drag.tx + dx;
    view.ty = drag.ty + dy;
    scheduleRender();
  });
  window.addEventListener("mouseup", function () {
    drag = null;
    setTimeout(function () { dragged = false; }, 0);
  });

  // the column coordinate under a screen x (position index plus fraction), and back
  function columnAt(L, x) {
    for (let p = 0; p < nPos; p++) if (x < L.left[p] + L.widths[p]) return p + Math.max(0, (x - L.left[p]) / L.widths[p]);
    return nPos;
  }
  function zoomAt(x, y, factor) {
    const L = lastLayout;
    const u = columnAt(L, x), v = (y - L.top) / L.rowH;
    view.z = Math.min(40, Math.max(1, view.z * factor));
    if (view.z === 1) { view.tx = 0; view.ty = 0; scheduleRender(); return; }
    view.tx = 0; view.ty = 0;
    const drawn = graphs.map(function (G, g) { return { G: G, g: g, units: units(G, g) }; });
    const M = computeLayout(drawn, L.width, L.height);
    const p = Math.min(Math.floor(u), nPos - 1);
    const nx = M.left[p] + (u - p) * M.widths[p];
    view.tx = x - nx;
    view.ty = y - (M.top + v * M.rowH);
    scheduleRender();
  }
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; render(); });
  }
  function fit() { view.z = 1; view.tx = 0; view.ty = 0; render(); }

  // ---- controls -----------------------------------------------------------------------------------
  function setSlider(id, value) {
    $(id).value = value;
    $(id + "-value").textContent = Number(value).toFixed(2);
  }
  $("node-threshold").addEventListener("input", function () {
    state.node = Number($("node-threshold").value);
    setSlider("node-threshold", state.node);
    render();
  });
  $("edge-threshold").addEventListener("input", function () {
    state.edge = Number($("edge-threshold").value);
    setSlider("edge-threshold", state.edge);
    render();
  });
  $("search").addEventListener("input", function () { state.q = $("search").value; render(); });
  $("view-pinned").addEventListener("change", function () {
    state.view = $("view-pinned").checked ? "pinned" : "full";
    render();
  });
  $("fit").addEventListener("click", fit);
  $("group").addEventListener("click", function () { groupChecked($("group-name").value.trim()); $("group-name").value = ""; });
  $("clear-pins").addEventListener("click", function () {
    state.pins = graphs.map(function () { return []; });
    state.groups = graphs.map(function () { return []; });
    render();
  });
  $("export-json").addEventListener("click", function () {
    graphs.forEach(function (G, g) {
      download(slug(G, g) + ".json", "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(exportJSON(g), null, 1)));
    });
  });
  $("export-svg").addEventListener("click", function () {
    graphs.forEach(function (G, g) { download(slug(G, g) + ".svg", "data:image/svg+xml;charset=utf-8," + encodeURIComponent(exportSVG(g))); });
  });
  $("export-png").addEventListener("click", function () {
    graphs.forEach(function (G, g) { exportPNG(g).then(function (url) { download(slug(G, g) + ".png", url); }); });
  });
  window.addEventListener("resize", scheduleRender);

  function slug(G, g) { return "subgraph" + (graphs.length > 1 ? "-" + (G.name || g) : ""); }
  function download(name, url) {
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  // ---- export ---------------------------------------------------------------------------------------
  // The current subgraph (the pinned nodes, or every shown node when none is pinned) in the
  // circuit-tracer schema, with the pins and groups as its qParams.
  function exportJSON(g) {
    g = g || 0;
    const G = graphs[g];
    let keep;
    if (state.pins[g].length) {
      keep = state.pins[g].map(function (id) { return G.index[id]; });
    } else {
      const fv = fullVisible(G);
      keep = [];
      fv.vis.forEach(function (v, i) { if (v) keep.push(i); });
    }
    const inside = {};
    keep.forEach(function (i) { inside[i] = true; });
    const links = [];
    G.edges.forEach(function (e) {
      if (inside[e[0]] && inside[e[1]]) links.push({ source: G.nodes[e[0]].id, target: G.nodes[e[1]].id, weight: e[2] });
    });
    const metadata = Object.assign({}, G.ct_metadata, { node_threshold: state.node });
    return {
      metadata: metadata,
      qParams: {
        pinnedIds: state.pins[g].slice(),
        supernodes: state.groups[g].map(function (grp) { return [grp.name].concat(grp.ids); }),
        linkType: "both",
        clickedId: state.selected[g] !== null ? G.nodes[state.selected[g]].id : "",
        sg_pos: "",
      },
      nodes: keep.map(function (i) { return G.nodes[i].ct; }),
      links: links,
    };
  }

  function exportSVG(g) {
    const svg = panes[g || 0].querySelector("svg").cloneNode(true);
    const style = document.createElementNS(SVG_NS, "style");
    style.textContent = $("graph-style").textContent;
    svg.insertBefore(style, svg.firstChild);
    const bg = el("rect", { x: 0, y: 0, width: "100%", height: "100%", fill: "#fff" });
    svg.insertBefore(bg, style.nextSibling);
    return new XMLSerializer().serializeToString(svg);
  }

  function exportPNG(g, scale) {
    const text = exportSVG(g);
    const svg = panes[g || 0].querySelector("svg");
    const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
    scale = scale || 2;
    return new Promise(function (resolve, reject) {
      const img = new Image();
      img.onload = function () {
        const canvas = document.createElement("canvas");
        canvas.width = w * scale;
        canvas.height = h * scale;
        const ctx = canvas.getContext("2d");
        ctx.scale(scale, scale);
        ctx.drawImage(img, 0, 0);
        resolve(canvas.toDataURL("image/png"));
      };
      img.onerror = function () { reject(new Error("the SVG did not render")); };
      img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(text);
    });
  }

  // ---- URL fragment ---------------------------------------------------------------------------------
  // node=<share>&edge=<share>&q=<text>&view=pinned&pins=<id>,<id>&groups=<name>:<id>+<id>;...
  // (pins.1 / groups.1 / sel.1 for the second graph); threshold= is node=, click=<index>
  // clicks a node, hover=<index> hovers one (both in the first graph).
  function suffix(g) { return g === 0 ? "" : "." + g; }
  function fragment() {
    const parts = [];
    if (state.node !== 1) parts.push("node=" + state.node);
    if (state.edge !== 1) parts.push("edge=" + state.edge);
    if (state.q) parts.push("q=" + encodeURIComponent(state.q));
    if (state.view === "pinned") parts.push("view=pinned");
    graphs.forEach(function (G, g) {
      if (state.pins[g].length) parts.push("pins" + suffix(g) + "=" + state.pins[g].join(","));
      if (state.groups[g].length) {
        parts.push("groups" + suffix(g) + "=" + state.groups[g].map(function (grp) {
          return encodeURIComponent(grp.name) + ":" + grp.ids.join("+");
        }).join(";"));
      }
      if (state.selected[g] !== null) parts.push("sel" + suffix(g) + "=" + G.nodes[state.selected[g]].id);
    });
    return parts.join("&");
  }
  let applying = false;
  function writeFragment() {
    if (applying) return;
    const text = fragment();
    if (("#" + text) !== window.location.hash && !(text === "" && window.location.hash === "")) {
      history.replaceState(null, "", text ? "#" + text : window.location.pathname + window.location.search);
    }
    emit("statechange", getState());
  }
  function readFragment() {
    const params = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      const eq = part.indexOf("=");
      if (eq > 0) params[decodeURIComponent(part.slice(0, eq))] = part.slice(eq + 1);
    });
    return params;
  }
  function applyFragment() {
    const params = readFragment();
    const num = function (v, dflt) { const x = Number(v); return v !== undefined && !isNaN(x) ? Math.min(1, Math.max(0, x)) : dflt; };
    state.node = num(params.node !== undefined ? params.node : params.threshold, 1);
    state.edge = num(params.edge, 1);
    state.q = params.q !== undefined ? decodeURIComponent(params.q) : "";
    state.view = params.view === "pinned" ? "pinned" : "full";
    graphs.forEach(function (G, g) {
      const pins = params["pins" + suffix(g)];
      state.pins[g] = pins ? pins.split(",").filter(function (id) { return id in G.index; }) : [];
      const groups = params["groups" + suffix(g)];
      state.groups[g] = groups ? groups.split(";").map(function (spec) {
        const colon = spec.lastIndexOf(":");
        return {
          name: decodeURIComponent(spec.slice(0, colon)),
          ids: spec.slice(colon + 1).split("+").filter(function (id) { return id in G.index; }),
        };
      }).filter(function (grp) { return grp.ids.length; }) : [];
      state.groups[g].forEach(function (grp) {
        grp.ids.forEach(function (id) { if (state.pins[g].indexOf(id) < 0) state.pins[g].push(id); });
      });
      const sel = params["sel" + suffix(g)];
      state.selected[g] = sel !== undefined && sel in G.index ? G.index[sel] : null;
    });
    syncControls();
    applying = true;
    render();
    applying = false;
    if (params.click !== undefined) {
      const shape = panes[0].querySelector('.node[data-index="' + Number(params.click) + '"]');
      if (shape) shape.dispatchEvent(new MouseEvent("click", { bubbles: true, cancelable: true, view: window }));
    }
    if (params.hover !== undefined) {
      const shape = panes[0].querySelector('.node[data-index="' + Number(params.hover) + '"]');
      if (shape) shape.dispatchEvent(new MouseEvent("mouseover", { bubbles: true, view: window }));
    }
    if (params.click === undefined) writeFragment();
  }
  function syncControls() {
    setSlider("node-threshold", state.node);
    setSlider("edge-threshold", state.edge);
    $("search").value = state.q;
    $("view-pinned").checked = state.view === "pinned";
  }

  function getState() {
    return JSON.parse(JSON.stringify({
      node: state.node, edge: state.edge, q: state.q, view: state.view,
      pins: state.pins, groups: state.groups, selected: state.selected, zoom: view.z,
    }));
  }
  function setState(partial) {
    ["node", "edge", "q", "view", "pins", "groups", "selected"].forEach(function (k) {
      if (partial[k] !== undefined) state[k] = JSON.parse(JSON.stringify(partial[k]));
    });
    syncControls();
    render();
  }

  // ---- summary and start ---------------------------------------------------------------------------
  panes.forEach(function (pane, g) {
    const G = graphs[g];
    const head = pane.querySelector(".pane-head");
    const scores = G.scores ? Object.keys(G.scores).map(function (k) { return k + " " + G.scores[k].toFixed(3); }).join(" · ") : "";
    head.textContent = (graphs.length > 1 ? G.name + ": " : "") +
      (G.dictionary_names.length ? G.dictionary_names.length + " dictionaries · " : "") +
      G.nodes.length + " nodes, " + G.edges.length + " of " + G.n_edges_total + " edges" +
      (scores ? " · " + scores : "");
  });
  $("summary").textContent = (graphs[0].model_name ? graphs[0].model_name + " · " : "") +
    (graphs[0].node_threshold !== null && graphs[0].node_threshold !== undefined ? "pruned at " + graphs[0].node_threshold : "unpruned");

  window.sparseCircuitsPage = {
    version: 1,
    data: pageData,
    getState: getState,
    setState: setState,
    fit: fit,
    render: render,
    visible: function (g) { return units(graphs[g || 0], g || 0).list.map(function (u) { return u.node ? u.members[0] : u.members.slice(); }); },
    exportJSON: exportJSON,
    exportSVG: exportSVG,
    exportPNG: exportPNG,
    panel: $("plugin-panel"),
    on: function (name, fn) { (listeners[name] = listeners[name] || []).push(fn); },
    off: function (name, fn) { listeners[name] = (listeners[name] || []).filter(function (f) { return f !== fn; }); },
  };
  applyFragment();
  window.addEventListener("hashchange", applyFragment);
})();
