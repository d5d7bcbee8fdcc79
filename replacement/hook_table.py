"""Which hook names hold which activation: one table per architecture, read by everything that
interprets a hook name (processing conversion, splice checks, the linear attribution engine, the
peer-name translation).

Three kinds of fact, in TransformerLens 4 (bridge) meaning, per block `blocks.l.`:

1. Same tensor. A bridge exposes one activation under several names; the table maps each alias
   to one canonical name. In every architecture:

   | alias                                                 | canonical             |
   |-------------------------------------------------------|-----------------------|
   | `hook_in`, `ln1.hook_in`                              | `hook_resid_pre`      |
   | `ln2.hook_in`                                         | `hook_resid_mid`      |
   | `hook_out`                                            | `hook_resid_post`     |
   | `attn.hook_in`, `attn.{q,k,v,qkv}.hook_in`            | `ln1.hook_out`        |
   | `mlp.hook_in`, `mlp.in.hook_in`, `mlp.gate.hook_in`   | `ln2.hook_out`        |
   | `mlp.out.hook_out`                                    | `mlp.hook_out`        |
   | `attn.o.hook_out`                                     | `attn.hook_out`       |
   | `attn.o.hook_in` / `attn.{q,k,v}.hook_out`            | `attn.hook_z` / `attn.hook_{q,k,v}` |

   Pre-norm blocks (GPT-2, Llama): `mlp.hook_out` is `hook_mlp_out` and `attn.hook_out` is
   `hook_attn_out`. Blocks with norms after attention and MLP (Gemma-2/3): `ln2_post.hook_in` is
   `mlp.hook_out` (the MLP's own output) and `ln2_post.hook_out` is `hook_mlp_out` (what enters
   the residual stream); likewise `ln1_post` for attention.

2. A norm's output before or after its weight. `ln1/ln2/ln_final.hook_normalized` precede the
   norm's weight (and bias), `.hook_out` follow them; on a folded model (`fold_ln`) the two are
   equal, since the weight lives in the next linear layer.

3. An MLP's input and output. A dictionary replaces the MLP of layer l when it reads the MLP's
   input (`hook_resid_mid`, `ln2.hook_normalized`, or `ln2.hook_out` and its aliases) and writes
   the MLP's output: `hook_mlp_out` (after the post-norm, where there is one) or `mlp.hook_out`
   (the MLP's own output, before a post-norm).

TransformerLens 2/3 names, as SAELens and circuit-tracer write them (`from_tl2`):

| TL2/3 name             | LayerNorm, unfolded | LayerNorm, folded      | RMSNorm (folded or not) |
|------------------------|---------------------|------------------------|-------------------------|
| `ln*.hook_normalized`  | `ln*.hook_out`      | `ln*.hook_normalized`  | `ln*.hook_normalized`   |
| `hook_mlp_in`          | `hook_resid_mid`    | `hook_resid_mid`       | `hook_resid_mid`        |
| `mlp.hook_in` (circuit-tracer's MLP wrapper)  | `mlp.hook_in` = `ln2.hook_out` | same | same |
| `mlp.hook_out` (circuit-tracer's MLP wrapper) | `mlp.hook_out` (before a post-norm) | same | same |

every other name means the same in both.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple


class NormFacts(NamedTuple):
    """What the meaning of a hook name depends on: the architecture's norms."""

    layernorm: bool
    """LayerNorm (True) or RMSNorm (False)."""
    post_norms: bool
    """Norms after attention and MLP whose outputs are `hook_attn_out` / `hook_mlp_out`."""


GPT2 = NormFacts(layernorm=True, post_norms=False)
LLAMA = NormFacts(layernorm=False, post_norms=False)
GEMMA2 = NormFacts(layernorm=False, post_norms=True)
PROVISIONAL = GPT2
"""What loaders assume when they do not know the model."""

# ---- 1. aliases: per-block suffix -> canonical suffix ---------------------------------------------
_SAME_EVERYWHERE = {
    "hook_in": "hook_resid_pre",
    "ln1.hook_in": "hook_resid_pre",
    "ln2.hook_in": "hook_resid_mid",
    "hook_out": "hook_resid_post",
    "attn.hook_in": "ln1.hook_out",
    "attn.q.hook_in": "ln1.hook_out",
    "attn.k.hook_in": "ln1.hook_out",
    "attn.v.hook_in": "ln1.hook_out",
    "attn.qkv.hook_in": "ln1.hook_out",
    "mlp.hook_in": "ln2.hook_out",
    "mlp.in.hook_in": "ln2.hook_out",
    "mlp.gate.hook_in": "ln2.hook_out",
    "mlp.out.hook_out": "mlp.hook_out",
    "attn.o.hook_out": "attn.hook_out",
    "attn.o.hook_in": "attn.hook_z",
    "attn.q.hook_out": "attn.hook_q",
    "attn.k.hook_out": "attn.hook_k",
    "attn.v.hook_out": "attn.hook_v",
}
_SAME_PRE_NORM = {"mlp.hook_out": "hook_mlp_out", "attn.hook_out": "hook_attn_out"}
_SAME_POST_NORM = {
    "ln2_post.hook_in": "mlp.hook_out",
    "ln2_post.hook_out": "hook_mlp_out",
    "ln1_post.hook_in": "attn.hook_out",
    "ln1_post.hook_out": "hook_attn_out",
}
_SAME_GLOBAL = {"embed.hook_out": "hook_embed", "unembed.hook_in": "ln_final.hook_out"}

# ---- 2. norm outputs: canonical suffix -> (norm, after its weight) ---------------------------------
_NORM_OUTPUTS = {
    f"{norm}.{point}": (norm, point == "hook_out")
    for norm in ("ln1", "ln2", "ln_final")
    for point in ("hook_normalized", "hook_out")
}

# ---- what processing changes (canonical suffixes) --------------------------------------------------
_RESIDUAL_WRITES = {
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_mlp_out",
    "hook_attn_out",
    "mlp.hook_out",  # centring centres W_out whether or not a post-norm follows
    "attn.hook_out",
    "hook_embed",
    "hook_pos_embed",
}
_VALUE_BIAS = {"attn.hook_v", "attn.hook_z"}
_RESIDUAL_WIDTH = _RESIDUAL_WRITES | set(_NORM_OUTPUTS)
# activations that folding and centring leave as they are (folding is exact: a norm's weight
# moves into the next linear layer, whose outputs stay the same; centring touches only writes)
_UNCHANGED_BY_PROCESSING = {
    "ln1.hook_scale",
    "ln2.hook_scale",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
}

# ---- 3. the MLP's input and output --------------------------------------------------------------
MlpRead = Literal["resid", "normalized", "out"]
"""Where an MLP-replacing dictionary reads: the residual stream before ln2, ln2's output before
its weight, or after it (the MLP's own input)."""
MlpWrite = Literal["written", "raw"]
"""Where it writes: what enters the residual stream (`hook_mlp_out`), or the MLP's own output
before a post-norm (`mlp.hook_out` in Gemma)."""
_MLP_READS: dict[str, MlpRead] = {
    "hook_resid_mid": "resid",
    "ln2.hook_normalized": "normalized",
    "ln2.hook_out": "out",
}

_BLOCK = re.compile(r"^(blocks\.(\d+)\.)(.*)$")


class HookName(NamedTuple):
    """A hook name split into its block prefix (`blocks.3.`, or "" outside blocks) and suffix."""

    prefix: str
    suffix: str
    layer: int


def split_hook(hook: str) -> HookName:
    """`blocks.3.ln2.hook_out` -> ("blocks.3.", "ln2.hook_out", 3); ("", name, -1) elsewhere."""
    match = _BLOCK.match(hook)
    if match:
        return HookName(match.group(1), match.group(3), int(match.group(2)))
    return HookName("", hook, -1)


def canonical(hook: str, facts: NormFacts = PROVISIONAL) -> str:
    """The canonical TL4 name of the tensor `hook` names on a model with `facts`."""
    prefix, suffix, _ = split_hook(hook)
    if not prefix:
        return _SAME_GLOBAL.get(suffix, suffix)
    suffix = _SAME_EVERYWHERE.get(suffix, suffix)
    extra = _SAME_POST_NORM if facts.post_norms else _SAME_PRE_NORM
    suffix = extra.get(suffix, suffix)
    return prefix + suffix


def same_tensor(a: str, b: str, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether two hook names hold the same tensor on a model with `facts`."""
    return canonical(a, facts) == canonical(b, facts)


class NormRead(NamedTuple):
    """A hook that holds a norm's output."""

    norm: str
    """The norm's module path, e.g. `blocks.1.ln2` or `ln_final`."""
    after_weight: bool
    """True for the output after the norm's weight and bias (`hook_out`), False before."""


def norm_output(hook: str, facts: NormFacts = PROVISIONAL) -> NormRead | None:
    """The norm whose output `hook` holds (before or after its weight), or None."""
    prefix, suffix, _ = split_hook(canonical(hook, facts))
    found = _NORM_OUTPUTS.get(suffix)
    if found is None:
        return None
    norm, after = found
    return NormRead(prefix + norm, after)


def before_weight(norm: NormRead) -> str:
    """The hook of a norm's output before its weight (`<norm>.hook_normalized`)."""
    return f"{norm.norm}.hook_normalized"


def norm_hook(norm: NormRead) -> str:
    """The norm module's own hook for this read (`hook_out` or `hook_normalized`): aliases such
    as `mlp.hook_in` sit on the module after the norm and do not fire when it runs alone."""
    return f"{norm.norm}.hook_out" if norm.after_weight else before_weight(norm)


def is_residual_write(hook: str, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether `hook` holds the residual stream or a write into it (centring changes it)."""
    return split_hook(canonical(hook, facts)).suffix in _RESIDUAL_WRITES


def holds_value_bias(hook: str, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether `hook` holds the attention value bias on an unfolded model (folding moves it)."""
    return split_hook(canonical(hook, facts)).suffix in _VALUE_BIAS


def processing_known(hook: str, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether the table knows what folding and centring do to `hook` (nothing, centring a
    residual write, moving the value bias, or dropping a norm's weight from its output)."""
    suffix = split_hook(canonical(hook, facts)).suffix
    known = _RESIDUAL_WRITES | _VALUE_BIAS | set(_NORM_OUTPUTS) | _UNCHANGED_BY_PROCESSING
    return suffix in known or suffix == "ln_final.hook_scale"


def has_residual_width(hook: str, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether `hook` is d_model wide (residual stream, writes into it, norm outputs)."""
    return split_hook(canonical(hook, facts)).suffix in _RESIDUAL_WIDTH


def mlp_read(hook: str, layer: int, facts: NormFacts = PROVISIONAL) -> MlpRead | None:
    """How `hook` reads the input of layer `layer`'s MLP, or None if it does not."""
    prefix, suffix, at = split_hook(canonical(hook, facts))
    return _MLP_READS.get(suffix) if at == layer else None


def mlp_write(hook: str, layer: int, facts: NormFacts = PROVISIONAL) -> MlpWrite | None:
    """How `hook` holds the output of layer `layer`'s MLP, or None if it does not."""
    prefix, suffix, at = split_hook(canonical(hook, facts))
    if at != layer:
        return None
    if suffix == "hook_mlp_out":
        return "written"
    return "raw" if suffix == "mlp.hook_out" else None


class MlpReplacement(NamedTuple):
    """How a dictionary replaces one layer's MLP."""

    layer: int
    read: MlpRead
    write: MlpWrite


def mlp_replacement(
    in_hook: str, out_hook: str, facts: NormFacts = PROVISIONAL
) -> MlpReplacement | None:
    """The MLP a transcoder at `in_hook -> out_hook` replaces, or None if it replaces none."""
    layer = split_hook(out_hook).layer
    write = mlp_write(out_hook, layer, facts)
    read = mlp_read(in_hook, layer, facts)
    if layer < 0 or write is None or read is None:
        return None
    return MlpReplacement(layer, read, write)


def is_layernorm(cfg: Any) -> bool:
    """True for a LayerNorm model config, False for RMSNorm."""
    kind = str(getattr(cfg, "normalization_type", "") or "")
    if kind:
        return kind.upper().startswith("LN")
    return not bool(getattr(cfg, "uses_rms_norm", False))


def norm_facts(model: Any) -> NormFacts:
    """The `NormFacts` of a loaded TransformerBridge."""
    post = "blocks.0.ln2_post.hook_scale" in model.hook_dict
    return NormFacts(layernorm=is_layernorm(model.cfg), post_norms=post)


_POST_NORM_OF = {"mlp.hook_out": "ln2_post", "attn.hook_out": "ln1_post"}


def post_norm_of(hook: str, facts: NormFacts) -> str | None:
    """The norm between `hook` (an MLP's or attention's own output) and the residual stream
    (`blocks.l.ln2_post` in Gemma), or None where the output enters the stream directly."""
    if not facts.post_norms:
        return None
    prefix, suffix, _ = split_hook(canonical(hook, facts))
    return prefix + _POST_NORM_OF[suffix] if suffix in _POST_NORM_OF else None


_RESIDUAL_STREAM = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_embed"}


def is_residual_stream(hook: str, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether `hook` holds the residual stream itself (or the embedding that starts it)."""
    return split_hook(canonical(hook, facts)).suffix in _RESIDUAL_STREAM


_MODULE_OUTPUTS = {"hook_mlp_out": "mlp.hook_out", "hook_attn_out": "attn.hook_out"}


def module_output(hook: str, facts: NormFacts) -> str:
    """The hook of the MLP's or attention's own output for `hook_mlp_out` / `hook_attn_out`
    (they differ where a post-norm sits between), `hook` otherwise."""
    prefix, suffix, _ = split_hook(hook)
    if facts.post_norms and suffix in _MODULE_OUTPUTS:
        return prefix + _MODULE_OUTPUTS[suffix]
    return hook


# ---- what the local replacement model freezes ---------------------------------------------------
_FROZEN_SUFFIXES = ("attn.hook_pattern", "hook_scale")


def is_frozen_site(hook: str) -> bool:
    """Attention patterns and norm scales: held at clean values in the local replacement model."""
    return hook.endswith(_FROZEN_SUFFIXES)


def frozen_sites(model: Any) -> list[str]:
    """Every attention pattern and norm scale hook of `model` (q/k norms included)."""
    return [name for name in model.hook_dict if is_frozen_site(name)]


@contextlib.contextmanager
def quiet_norm_edits() -> Iterator[None]:
    """Silence TransformerLens 4.3's warning that a hook edited `hook_scale`/`hook_normalized` on
    the native-autograd path: freezing norm scales does that on purpose, on every norm of every
    forward (26 warnings for two 5-token calls)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NATIVE_EDIT_WARNING)
        yield


_NATIVE_EDIT_WARNING = "A forward hook edited hook_scale/hook_normalized on the native-autograd"


# ---- TransformerLens 2/3 names (SAELens, circuit-tracer) ----------------------------------------
_TL2_RENAMED = {"hook_mlp_in": "hook_resid_mid"}


def from_tl2(hook: str, fold_ln: bool, layernorm: bool = True) -> str:
    """A TransformerLens 2/3 hook name in TransformerLens 4 meaning.

    TL2's LayerNorm hooks `hook_normalized` after its weight and bias when they are not folded;
    TL4's precedes them, and `ln*.hook_out` is the norm's output. TL2's RMSNorm (Llama, Gemma)
    hooks `hook_normalized` before its weight, folded or not: the same as TL4's. TL2's
    `hook_mlp_in` is the residual stream entering the MLP block (before ln2). circuit-tracer's
    `mlp.hook_in` / `mlp.hook_out` (the hooks of its MLP wrapper) are the MLP's own input and
    output, as in TL4. Loaders that do not know the model assume LayerNorm.
    """
    prefix, suffix, _ = split_hook(hook)
    if suffix in _TL2_RENAMED:
        return prefix + _TL2_RENAMED[suffix]
    read = norm_output(hook)
    if read is not None and not read.after_weight and layernorm and not fold_ln:
        return f"{read.norm}.hook_out"
    return hook


def block_hook(layer: int, suffix: str) -> str:
    """`blocks.{layer}.{suffix}`."""
    return f"blocks.{layer}.{suffix}"
