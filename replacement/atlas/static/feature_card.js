// Feature card (no dependencies): builds from a record of FeatureAtlas.record the same DOM as
// replacement/atlas/card.py, styled by feature_card.css. vocab maps token id -> string (an
// array or an object). Exposed as window.renderFeatureCard(record, vocab) -> HTMLElement.
(function () {
  "use strict";
  const HIST_WIDTH = 240, HIST_HEIGHT = 44;

  function fmt(v) {
    if (v === 0) return "0";
    return Math.abs(v) >= 1e-3 ? Number(v.toPrecision(3)).toString() : v.toExponential(2);
  }
  function display(tok) {
    return String(tok).replace(/\n/g, "⏎").replace(/\t/g, "→").replace(/\r/g, "␍");
  }
  function node(tag, cls, text) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (text !== undefined) el.textContent = text;
    return el;
  }
  function context(ctx, vocab, maxAct) {
    const line = node("div", "sc-ctx");
    line.appendChild(node("span", "sc-val", fmt(ctx.value)));
    ctx.tokens.forEach(function (tok, i) {
      const act = ctx.acts[i];
      const span = node("span", i === ctx.centre ? "sc-tok sc-centre" : "sc-tok", display(vocab[tok]));
      if (act) span.style.background = "rgba(255,140,0," + (0.85 * act / 255).toFixed(3) + ")";
      span.title = fmt(act / 255 * maxAct);
      line.appendChild(span);
    });
    return line;
  }
  function histogram(hist) {
    const top = Math.max.apply(null, hist.concat([0]));
    if (!(top > 0)) return null;
    // markup parsed by the HTML parser lands in the SVG namespace (no namespace URL needed)
    const w = HIST_WIDTH / hist.length;
    const bars = hist.map(function (h, i) {
      return '<rect x="' + (i * w).toFixed(1) + '" y="' + (HIST_HEIGHT * (1 - h / top)).toFixed(1) +
        '" width="' + Math.max(w - 1, 1).toFixed(1) + '" height="' + (HIST_HEIGHT * h / top).toFixed(1) + '"/>';
    }).join("");
    const box = document.createElement("div");
    box.innerHTML = '<svg class="sc-hist" width="' + HIST_WIDTH + '" height="' + HIST_HEIGHT + '" viewBox="0 0 ' +
      HIST_WIDTH + " " + HIST_HEIGHT + '">' + bars + "</svg>";
    return box.firstChild;
  }
  function list(title, items, cls, text) {
    const box = node("div", "sc-list");
    box.appendChild(node("h4", "", title));
    const ol = node("ol");
    items.forEach(function (it) {
      const li = node("li", cls, text(it));
      li.appendChild(node("span", "sc-num", fmt(it[1])));
      ol.appendChild(li);
    });
    box.appendChild(ol);
    return box;
  }

  window.renderFeatureCard = function (r, vocab) {
    const card = node("div", "sc-card");
    card.setAttribute("data-layer", r.layer);
    card.setAttribute("data-feature", r.feature);
    const head = node("div", "sc-head");
    head.appendChild(node("b", "", "L" + r.layer + " F" + r.feature));
    head.appendChild(document.createTextNode(" "));
    head.appendChild(node("span", "sc-label", r.label));
    card.appendChild(head);
    card.appendChild(node("div", "sc-stats", "fires on " + fmt(100 * r.frequency) + "% of tokens · mean " +
      fmt(r.mean) + " · max " + fmt(r.max)));
    const sc = r.interpretability;  // from `sparse-circuits interpret`, when scored
    if (sc && sc.explanation != null) {
      let text = "explained as " + sc.explanation;
      if (sc.detection != null) text += " · detection " + sc.detection.toFixed(2) + " · fuzzing " + sc.fuzzing.toFixed(2);
      if (sc.concept) text += " · best concept " + sc.concept + " (F1 " + sc.concept_f1.toFixed(2) + ")";
      card.appendChild(node("div", "sc-stats sc-interp", text));
    }
    const hist = histogram(r.hist);
    if (hist) card.appendChild(hist);
    const lists = node("div", "sc-lists");
    const tok = function (it) { return display(vocab[it[0]]); };
    if (r.promoted) lists.appendChild(list("promotes", r.promoted, "sc-pos", tok));
    if (r.suppressed) lists.appendChild(list("suppresses", r.suppressed, "sc-neg", tok));
    if (r.inputs) lists.appendChild(list("excited by (input)", r.inputs, "", tok));
    lists.appendChild(list("nearest features", r.neighbours.map(function (n) { return [n[0], n[1], n[2]]; }),
      "", function (it) { return "F" + it[0] + " " + it[2]; }));
    card.appendChild(lists);
    card.appendChild(node("h4", "", "top activations"));
    if (!r.top.length) card.appendChild(node("div", "sc-empty", "never fired on the corpus"));
    r.top.forEach(function (c) { card.appendChild(context(c, vocab, r.max)); });
    if (r.bands.some(function (b) { return b.length; })) {
      card.appendChild(node("h4", "", "examples by activation quantile"));
    }
    r.bands.forEach(function (examples, b) {
      if (!examples.length) return;
      card.appendChild(node("div", "sc-band", "band " + (b + 1) + ": (" + fmt(r.band_edges[b]) + ", " +
        fmt(r.band_edges[b + 1]) + "]"));
      examples.forEach(function (c) { card.appendChild(context(c, vocab, r.max)); });
    });
    return card;
  };
})();
