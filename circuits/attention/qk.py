"""QK attributions: an attention score as a bilinear sum over (query source, key source) pairs.

Head h of layer l scores query position q against key position k as

    s = g * scale * (R_q (N1(x_q) W_Q + b'_Q) / n_q) . (R_k (N1(x_k) W_K + b'_K) / n_k)

with x the residual stream feeding the layer (`hook_resid_pre`), N1 the frozen ln1 without its
bias (its bias is in b' = b_ln1 W + b), n_q, n_k the frozen query/key norm scales times their
weights where the model has them (Gemma-3), R_p the rotary rotation at position p (Llama, Gemma;
the identity elsewhere), scale the model's 1/sqrt(d_head) (Gemma's query_pre_attn_scalar) and
g = c tanh(s_raw / c) / s_raw the frozen factor of a soft cap c (Gemma-2; 1 without one). The
residual stream is a sum over sources (`circuits.attention.stream`), and every map on either
side is linear, so

    s = sum_i sum_j u_i . v_j,   u_i = R_q N1(x_i,q) W_Q / n_q,   v_j = g scale R_k N1(x_j,k) W_K / n_k

with one more query-side term for b'_Q and one more key-side term for b'_K. Rotation happens on
each side at its own position, so the pair terms carry the relative-position rotation
R_q^T R_k = R_(k - q) of the bilinear form. The sums are exact; `check` reproduces the model's
own queries, keys and scores before anything is returned, and refuses by name a model whose
attention these formulas do not reproduce.

Pattern attribution: for query q, s_k - sum_k' p_k' s_k' (the score of key k against the
attention-weighted mean score) is the same bilinear sum with each key-side vector replaced by
v_j(k) - sum_k' p_k' v_j(k').
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attention.stream import ResidualStream
from circuits.attribution.attribute import _ordered, prompt_tokens
from circuits.attribution.sources import collect_sources
from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook

CHECK_TOLERANCE = 1e-4
"""Relative error allowed when the formulas reproduce the model's own queries, keys, scores."""


class Pair(NamedTuple):
    """One term of a QK attribution."""

    query_source: str
    """Label of the query-side source."""
    key_source: str
    """Label of the key-side source."""
    value: float
    """Its term of the score."""
    query_id: str
    """Graph node id of the query-side source ("" for positions, constants and biases)."""
    key_id: str
    """Graph node id of the key-side source."""


def top_pairs_of(
    U: Float[Tensor, "a e"], V: Float[Tensor, "b e"], n: int
) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Float[Tensor, " n"]]:
    """The n pairs (i, j) of largest |U_i . V_j|, exactly, without the full [a, b] product
    where norms allow: |U_i . V_j| <= |U_i| |V_j| bounds every pair left out of a block of the
    largest-norm rows; the block grows until that bound is below the n-th value found."""
    nu, nv = U.norm(dim=1), V.norm(dim=1)
    ou, ov = nu.argsort(descending=True), nv.argsort(descending=True)
    a, b = len(ou), len(ov)
    m_a, m_b = min(a, 64), min(b, 64)
    while True:
        block = U[ou[:m_a]] @ V[ov[:m_b]].T
        flat = block.reshape(-1)
        k = min(n, flat.numel())
        vals, where = flat.abs().topk(k)
        tau = float(vals[-1]) if k else 0.0
        left_a = float(nu[ou[m_a]] * nv[ov[0]]) if m_a < a else 0.0
        left_b = float(nu[ou[0]] * nv[ov[m_b]]) if m_b < b else 0.0
        if (left_a <= tau and left_b <= tau) or (m_a == a and m_b == b):
            i, j = where // m_b, where % m_b
            return ou[:m_a][i], ov[:m_b][j], flat[where]
        if left_a > tau:
            m_a = min(a, 2 * m_a)
        if left_b > tau:
            m_b = min(b, 2 * m_b)


@dataclass
class QKAttribution:
    """An attention score (or score difference) of one head, query and key, as pair terms."""

    layer: int
    head: int
    query_pos: int
    key_pos: int
    total: float
    """The model's score s (kind "score") or s_k - sum p s (kind "difference")."""
    kind: str
    query_vectors: Float[Tensor, "a d_head"]
    """u_i of each query-side source (rows of `query_labels`)."""
    key_vectors: Float[Tensor, "b d_head"]
    """v_j of each key-side source (the scale and cap factor folded in)."""
    query_labels: list[str]
    key_labels: list[str]
    query_ids: list[str]
    key_ids: list[str]

    def pairs(self) -> Float[Tensor, "a b"]:
        """Every pair term u_i . v_j; they sum to `total`."""
        return self.query_vectors @ self.key_vectors.T

    def query_totals(self) -> Float[Tensor, " a"]:
        """Each query-side source's share, summed over key-side sources."""
        return self.query_vectors @ self.key_vectors.sum(0)

    def key_totals(self) -> Float[Tensor, " b"]:
        """Each key-side source's share, summed over query-side sources."""
        return self.key_vectors @ self.query_vectors.sum(0)

    def top_pairs(self, n: int = 10) -> list[Pair]:
        """The n pairs of largest |term|, exactly (see `top_pairs_of`)."""
        i, j, v = top_pairs_of(self.query_vectors, self.key_vectors, n)
        return [
            Pair(
                self.query_labels[a],
                self.key_labels[b],
                float(x),
                self.query_ids[a],
                self.key_ids[b],
            )
            for a, b, x in zip(i.tolist(), j.tolist(), v.tolist(), strict=True)
        ]

    def _repr_html_(self) -> str:
        return qk_table_html(self)


def qk_table_html(att: QKAttribution, n: int = 10) -> str:
    """An HTML table of the top pairs and each side's top sources (the Jupyter view)."""
    what = "score" if att.kind == "score" else "score minus attention-weighted mean score"
    rows = "".join(
        f"<tr><td>{html.escape(p.query_source)}</td><td>{html.escape(p.key_source)}</td>"
        f"<td style='text-align:right'>{p.value:+.4f}</td></tr>"
        for p in att.top_pairs(n)
    )

    def side(totals: Tensor, labels: list[str]) -> str:
        order = totals.abs().argsort(descending=True)[:n].tolist()
        return "".join(
            f"<tr><td>{html.escape(labels[i])}</td><td style='text-align:right'>"
            f"{float(totals[i]):+.4f}</td></tr>"
            for i in order
        )

    return (
        f"<div><b>L{att.layer} H{att.head}, query @{att.query_pos}, key @{att.key_pos}</b>: "
        f"{what} = {att.total:+.4f} = sum of {att.query_vectors.shape[0]} x "
        f"{att.key_vectors.shape[0]} pair terms"
        "<table><tr><th>query-side source</th><th>key-side source</th><th>term</th></tr>"
        f"{rows}</table>"
        "<table style='display:inline-table;margin-right:2em'><tr><th>query side</th>"
        f"<th>total</th></tr>{side(att.query_totals(), att.query_labels)}</table>"
        "<table style='display:inline-table'><tr><th>key side</th><th>total</th></tr>"
        f"{side(att.key_totals(), att.key_labels)}</table></div>"
    )


@dataclass
class PatternAttribution:
    """Why head h at query q attends where it does: per key, s_k - sum_k' p_k' s_k'."""

    layer: int
    head: int
    query_pos: int
    keys: Int[Tensor, " k"]
    """Key positions the query may attend to (unmasked)."""
    pattern: Float[Tensor, " k"]
    """The attention weights on them."""
    scores: Float[Tensor, " k"]
    """The model's scores."""
    _attention: AttentionAttribution
    _query_side: Float[Tensor, "a e"]
    _key_side: Float[Tensor, "b k e"]

    @property
    def differences(self) -> Float[Tensor, " k"]:
        """s_k - sum_k' p_k' s_k' per key."""
        return self.scores - (self.pattern * self.scores).sum()

    def for_key(self, key: int) -> QKAttribution:
        """The difference at key position `key` as pair terms (they sum to it exactly)."""
        hits = (self.keys == key).nonzero()
        if len(hits) == 0:
            raise SparseCircuitsError(
                f"query {self.query_pos} does not attend to key {key} (masked); keys: "
                f"{self.keys.tolist()}"
            )
        at = int(hits[0, 0])
        mean = torch.einsum("k,bke->be", self.pattern.to(self._key_side), self._key_side)
        return self._attention._build(
            self.layer,
            self.head,
            self.query_pos,
            key,
            float(self.differences[at]),
            "difference",
            self._query_side,
            self._key_side[:, at] - mean,
        )


def _bias(model: Any, name: str, layer: int) -> Tensor | None:
    try:
        value = getattr(model, name)
    except AttributeError:  # bias-free projections expose no stacked bias
        return None
    return None if value is None else value[layer].detach()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding x -> x cos + rotate_half(x) sin on the first cos.shape[-1] dims;
    x [..., pos, head, e], cos and sin [pos, r]."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat([-rot[..., r // 2 :], rot[..., : r // 2]], dim=-1)
    out = rot * cos[:, None, :] + half * sin[:, None, :]
    return torch.cat([out, rest], dim=-1)


class AttentionAttribution:
    """QK and pattern attributions of one prompt (the residual stream swept once per layer).

    Example:
        att = AttentionAttribution(model, dictionaries, "a b c a b")
        att.qk(layer=1, head=3, query=4, key=2).top_pairs(5)
        att.pattern(layer=1, head=3, query=4).for_key(2)
    """

    def __init__(self, model: Any, dictionaries: Any, prompt: str | Tensor):
        self.model = model
        self.dictionaries = _ordered(model, dictionaries)
        self.tokens = prompt_tokens(model, prompt)
        self.sources = collect_sources(model, self.dictionaries, self.tokens)
        self.stream = ResidualStream(model, self.dictionaries, self.tokens, self.sources)
        self._maps: dict[int, tuple[Tensor, Tensor, list[int]]] = {}
        self._label_cache: dict[int, tuple[Any, Any]] = {}
        cfg = model.cfg
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads

    # ---- per-layer maps --------------------------------------------------------------------
    def prepare(self, layers: list[int]) -> None:
        """Sweep once and keep the query/key vectors of these layers (others are dropped)."""
        for layer in layers:
            self._check_layer(layer)
        wanted = set(layers) - set(self._maps)
        if not wanted:
            return
        for layer, index, x in self.stream.sweep():
            if layer in wanted:
                self._maps[layer] = self._side_maps(layer, index, x)
                wanted.discard(layer)
            if not wanted:
                break

    def each_layer(self) -> Iterator[int]:
        """Sweep once, layer by layer: yields each layer with its query and key vectors kept
        (and the previous layer's dropped), for work over every layer in one sweep."""
        self._maps.clear()
        for layer, index, x in self.stream.sweep():
            self._maps = {layer: self._side_maps(layer, index, x)}
            yield layer
        self._maps.clear()

    def release(self) -> None:
        """Drop the kept per-layer vectors."""
        self._maps.clear()
        self._label_cache.clear()

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise SparseCircuitsError(f"layer {layer} is not in 0..{self.n_layers - 1}")

    def _project(self, x: Tensor, layer: int, side: str) -> Tensor:
        """Query or key vectors [n, pos, heads, e] of contributions x [n, pos, d] (no bias)."""
        return self.stream.project(x, layer, "Q" if side == "q" else "K")

    def _finish(self, v: Tensor, layer: int, side: str) -> Tensor:
        """Query/key norm (frozen scale and weight) and rotation, on [n, pos, heads, e]."""
        st = self.stream
        scale = st.get(layer, f"attn.{side}_norm.hook_scale")
        if scale is not None:  # [heads, pos, 1] in TransformerLens: to [pos, heads, 1]
            if scale.shape[0] != v.shape[1]:
                scale = scale.transpose(0, 1)
            norm = getattr(self.model.blocks[layer].attn, f"{side}_norm")
            w = norm.w.detach().to(v.dtype)
            w = 1.0 + w if getattr(norm, "uses_weight_offset", False) else w
            v = v / scale * w
        cos = st.get(layer, "attn.hook_cos")
        if cos is not None:
            v = _rotate(v, cos, st.get(layer, "attn.hook_sin"))
        return v

    def _side_maps(self, layer: int, index: Tensor, x: Tensor) -> tuple[Tensor, Tensor, list]:
        """[n + 1, pos, heads, e] query and key vectors of the live sources plus the bias row,
        checked against the model's own queries, keys and scores."""
        st, model = self.stream, self.model
        sides = []
        for side, bias_name in (("q", "b_Q"), ("k", "b_K")):
            v = self._project(x, layer, side)
            W = (model.W_Q if side == "q" else model.W_K)[layer].detach().to(x.dtype)
            b = torch.einsum("d,hde->he", st.ln1_bias(layer), W)
            extra = _bias(model, bias_name, layer)
            if extra is not None:
                b = b + extra.to(x.dtype)
            v = torch.cat([v, b.expand(1, st.n_pos, *b.shape)])
            sides.append(self._finish(v, layer, side))
        q, k = sides
        self._check(layer, q.sum(0), k.sum(0))
        return q, k, index.tolist()

    def score_scale(self, layer: int) -> float:
        """The factor of q . k in the score (1/sqrt(d_head), or the model's own scaling)."""
        scaling = getattr(self.model.blocks[layer].attn._original_component, "scaling", None)
        if scaling is not None:
            return float(scaling)
        return self.model.cfg.d_head**-0.5

    def _cap(self) -> float | None:
        cap = float(getattr(self.model.cfg, "attn_scores_soft_cap", -1.0) or -1.0)
        return cap if cap > 0 else None

    def raw_scores(self, layer: int, q: Tensor, k: Tensor) -> Float[Tensor, "head q k"]:
        """scale * q . k (before any soft cap), k's heads repeated for grouped queries."""
        k = k.repeat_interleave(q.shape[-2] // k.shape[-2], dim=-2)
        return torch.einsum("qhe,khe->hqk", q, k) * self.score_scale(layer)

    def cap_factor(self, raw: Tensor) -> Tensor:
        """g = c tanh(s / c) / s (1 without a cap; 1 where s = 0)."""
        cap = self._cap()
        if cap is None:
            return torch.ones_like(raw)
        capped = cap * torch.tanh(raw / cap)
        return torch.where(raw == 0, torch.ones_like(raw), capped / raw)

    def _check(self, layer: int, q: Tensor, k: Tensor) -> None:
        """Refuse (by name) where the formulas do not reproduce the model's attention."""
        st = self.stream
        for side, v in (("q", q), ("k", k)):
            name = (
                "hook_rot_" + side
                if st.get(layer, f"attn.hook_rot_{side}") is not None
                else ("hook_" + side)
            )
            actual = st.get(layer, f"attn.{name}")
            hook = block_hook(layer, f"attn.{name}")
            if actual is None:
                raise SparseCircuitsError(f"the model has no {hook} hook")
            if actual.shape != v.shape:
                raise SparseCircuitsError(
                    f"{hook} has shape {tuple(actual.shape)}; the QK "
                    f"decomposition made {tuple(v.shape)}"
                )
            _close(
                v,
                actual,
                f"the {'queries' if side == 'q' else 'keys'} of layer {layer} "
                f"({name}: rotary, query/key norm or projection layout)",
            )
        raw = self.raw_scores(layer, q, k)
        scores = raw * self.cap_factor(raw)
        actual = st.get(layer, "attn.hook_attn_scores")
        finite = torch.isfinite(actual)
        _close(
            scores[finite],
            actual[finite],
            f"the attention scores of layer {layer} (score "
            "scaling, soft cap, or a positional bias such as ALiBi)",
        )

    # ---- attributions ---------------------------------------------------------------------
    def _labels(self, index: list[int], side: str) -> tuple[list[str], list[str]]:
        t = self.stream.table
        bias = "query bias (ln1 bias W_Q + b_Q)" if side == "q" else "key bias (ln1 bias W_K + b_K)"
        return [t.labels[i] for i in index] + [bias], [t.node_ids[i] for i in index] + [""]

    def qk(self, layer: int, head: int, query: int, key: int) -> QKAttribution:
        """The score of head `head` of layer `layer` at (query, key) as pair terms."""
        self._check_layer(layer)
        if not 0 <= head < self.n_heads:
            raise SparseCircuitsError(f"head {head} is not in 0..{self.n_heads - 1}")
        n_pos = self.tokens.numel()
        if not 0 <= key <= query < n_pos:
            raise SparseCircuitsError(
                f"need 0 <= key <= query < {n_pos} (causal attention); got query {query}, key {key}"
            )
        actual = self.stream.get(layer, "attn.hook_attn_scores")[head, query, key]
        if not torch.isfinite(actual):
            raise SparseCircuitsError(
                f"layer {layer} masks key {key} for query {query} (a sliding window)"
            )
        self.prepare([layer])
        q, k, index = self._maps[layer]
        kv = head // (q.shape[2] // k.shape[2])
        u, v = q[:, query, head], k[:, key, kv]
        raw = self.score_scale(layer) * (u.sum(0) @ v.sum(0))
        v = v * self.score_scale(layer) * self.cap_factor(raw)
        return self._build(layer, head, query, key, float(actual), "score", u, v)

    def _build(
        self,
        layer: int,
        head: int,
        query: int,
        key: int,
        total: float,
        kind: str,
        u: Tensor,
        v: Tensor,
    ) -> QKAttribution:
        """A QKAttribution of every live source's vectors (rows of zeros left out)."""
        index = self._maps[layer][2]
        if layer not in self._label_cache:  # labels of the live sources, made once per layer
            self._label_cache[layer] = (self._labels(index, "q"), self._labels(index, "k"))
        (ql, qi), (kl, ki) = self._label_cache[layer]
        live_u, live_v = _nonzero(u), _nonzero(v)
        return QKAttribution(
            layer,
            head,
            query,
            key,
            total,
            kind,
            u[live_u],
            v[live_v],
            [ql[i] for i in live_u],
            [kl[i] for i in live_v],
            [qi[i] for i in live_u],
            [ki[i] for i in live_v],
        )

    def pattern(self, layer: int, head: int, query: int) -> PatternAttribution:
        """Why the head's weight at `query` went where it did (see `PatternAttribution`)."""
        self.qk(layer, head, query, query)  # checks and prepares
        q, k, index = self._maps[layer]
        kv = head // (q.shape[2] // k.shape[2])
        scores = self.stream.get(layer, "attn.hook_attn_scores")[head, query]
        keys = torch.isfinite(scores[: query + 1]).nonzero()[:, 0]
        u = q[:, query, head]
        v = k[:, keys, kv]  # [n + 1, keys, e]
        raw = self.score_scale(layer) * torch.einsum("e,ke->k", u.sum(0), v.sum(0))
        v = v * (self.score_scale(layer) * self.cap_factor(raw))[None, :, None]
        pattern = self.stream.get(layer, "attn.hook_pattern")[head, query, keys]
        return PatternAttribution(layer, head, query, keys, pattern, scores[keys], self, u, v)


def _nonzero(v: Tensor) -> list[int]:
    """Rows of v that are not all zero (sources after the position have none)."""
    return (v.abs().amax(-1) > 0).nonzero()[:, 0].tolist()


def _close(mine: Tensor, actual: Tensor, what: str) -> None:
    scale = actual.abs().max().clamp_min(1e-12)
    gap = float(((mine - actual).abs().max() / scale).item()) if actual.numel() else 0.0
    if not gap <= CHECK_TOLERANCE:
        raise SparseCircuitsError(
            f"the QK decomposition does not reproduce {what}: relative error {gap:.2e}; this "
            "model's attention is not supported"
        )
