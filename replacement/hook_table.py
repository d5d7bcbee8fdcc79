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

Nothing outside this module recognises a hook name by hand (compares it with a literal, tests
its ending, splits it at dots, matches a regex) or builds `blocks.{l}.<suffix>` itself: it asks
the helpers below (`split_hook`, `hook_layer`, `block_hook`, `fill_template`, `bridge_port`,
`stream_point`, `is_attention_pattern`, ...). `tests/test_hook_table_only.py` enforces this.
The same goes for Hugging Face module paths (sparsify's hookpoints, `from_hf_module`) and the
trainer's `BLOCK_SITES`.
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


def same_on_every_model(a: str, b: str) -> bool:
    """Whether two hook names hold the same tensor whatever the architecture's norms."""
    return all(same_tensor(a, b, facts) for facts in (GPT2, LLAMA, GEMMA2))


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


# ---- building and taking names apart ------------------------------------------------------------
def block_hook(layer: int | str, suffix: str) -> str:
    """`blocks.{layer}.{suffix}` (`layer` may be a placeholder such as `{layer}` or `{l}`)."""
    return f"blocks.{layer}.{suffix}"


def hook_layer(hook: str) -> int:
    """The block index in a hook name such as `blocks.3.hook_mlp_out` (-1 for embeddings)."""
    return split_hook(hook).layer


_LAYER_FIELD = "{layer}"


def block_template(suffix: str) -> str:
    """A hook template with `{layer}` for a suffix such as `hook_mlp_out` (a template stays)."""
    return suffix if is_template(suffix) else block_hook(_LAYER_FIELD, suffix)


def is_template(hook: str) -> bool:
    """Whether `hook` is a template with `{layer}` still to fill in."""
    return _LAYER_FIELD in hook


def fill_template(template: str, layer: int) -> str:
    """The hook of block `layer` for a template with `{layer}`, a per-block suffix such as
    `hook_mlp_out`, or a full block hook name (kept as it is)."""
    if is_template(template):
        return template.format(layer=layer)
    return template if split_hook(template).prefix else block_hook(layer, template)


def layer_pattern(hook: str) -> str:
    """`blocks.3.hook_mlp_out` -> `blocks.{l}.hook_mlp_out` (names outside blocks unchanged):
    how error messages list a model's hooks once for every layer."""
    prefix, suffix, _ = split_hook(hook)
    return block_hook("{l}", suffix) if prefix else hook


class Port(NamedTuple):
    """Where a hook sits on a bridge module: its input or output, or another hook point."""

    owner: str
    """The module's path relative to where the name starts ('' for that root itself)."""
    side: Literal["in", "out"] | None
    """`hook_in` / `hook_out` of that module; None for any other hook (e.g. `hook_scale`)."""


_PORTS: dict[str, Literal["in", "out"]] = {"hook_in": "in", "hook_out": "out"}


def bridge_port(hook: str) -> Port:
    """`ln2.hook_out` -> Port("ln2", "out"); `attn.hook_pattern` -> Port("attn", None)."""
    owner, _, point = hook.rpartition(".")
    return Port(owner, _PORTS.get(point))


def is_module_port(hook: str) -> bool:
    """Whether `hook` is a bridge module's `hook_in`/`hook_out` (which alias other hooks, or
    name a submodule's boundary), as opposed to the hooks a user reads (`hook_resid_pre`...)."""
    port = bridge_port(hook)
    return port.side is not None and port.owner != ""


def norm_scale_hook(norm: str) -> str:
    """The hook of the scale a norm module (`blocks.1.ln2`, `ln_final`) divides by."""
    return f"{norm}.hook_scale"


def is_attention_pattern(hook: str) -> bool:
    """Whether `hook` holds a block's attention probabilities (`blocks.l.attn.hook_pattern`)."""
    prefix, suffix, _ = split_hook(hook)
    return bool(prefix) and suffix == "attn.hook_pattern"


def is_norm_module(module: Any) -> bool:
    """Whether a bridge module is a norm (it has the hooks of a norm's scale and output)."""
    return hasattr(module, "hook_normalized") and hasattr(module, "hook_scale")


def has_post_attention_norm(model: Any) -> bool:
    """Whether blocks normalise the attention output before adding it (Gemma's ln1_post)."""
    return norm_scale_hook(block_hook(0, "ln1_post")) in model.hook_dict


_POST_NORM_WRITES = {"ln1_post": "hook_attn_out", "ln2_post": "hook_mlp_out"}


def post_norm_mismatch(model: Any) -> tuple[str, str] | None:
    """A norm after attention or MLP whose output is not what the table says it is (what enters
    the residual stream, `hook_attn_out` / `hook_mlp_out`) on `model`, as (norm, hook), or None
    where every post-norm the model has is as the table says."""
    for post, written in _POST_NORM_WRITES.items():
        point = model.hook_dict.get(block_hook(0, f"{post}.hook_out"))
        if point is not None and point is not model.hook_dict.get(block_hook(0, written)):
            return post, written
    return None


StreamPoint = Literal["pre", "mid", "post"]
_STREAM_POINTS: dict[str, StreamPoint] = {
    "hook_resid_pre": "pre",
    "hook_resid_mid": "mid",
    "hook_resid_post": "post",
}


def stream_point(hook: str, facts: NormFacts = PROVISIONAL) -> StreamPoint | None:
    """Where in its block `hook` holds the residual stream (before attention, between attention
    and MLP, after the MLP), or None if it does not."""
    return _STREAM_POINTS.get(split_hook(canonical(hook, facts)).suffix)


_ATTENTION_OUTPUTS = {"attn.hook_z", "hook_attn_out"}


def is_attention_output(hook: str, layer: int, facts: NormFacts = PROVISIONAL) -> bool:
    """Whether `hook` holds the output of layer `layer`'s attention, per head (`attn.hook_z`) or
    as written into the residual stream (`hook_attn_out`)."""
    prefix, suffix, at = split_hook(canonical(hook, facts))
    return at == layer and suffix in _ATTENTION_OUTPUTS


# ---- where a dictionary may sit (the trainer's `site`) ------------------------------------------
BLOCK_SITES = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_in",
    "hook_mlp_out",
    "ln1.hook_normalized",
    "ln2.hook_normalized",
    "attn.hook_z",
)
"""Hooks inside `blocks.{l}.` that an SAE can read and write (TransformerLens 4 names)."""


def is_block_site(site: str) -> bool:
    """Whether `site` is one of `BLOCK_SITES`."""
    return site in BLOCK_SITES


# ---- Hugging Face module paths (sparsify's hookpoints) ------------------------------------------
_HF_ATTENTION = ("attn", "self_attn", "attention")
_HF_MLP = "mlp"


class HfModule(NamedTuple):
    """What a Hugging Face module path names: which part of which layer."""

    layer: int
    """The block, from the last number in the path."""
    part: Literal["mlp", "attn", "block", "other"]
    """The MLP, the attention, the whole layer, or another module of the layer."""


def hf_module_part(path: str) -> HfModule | None:
    """`layers.3.mlp` -> (3, "mlp"); `h.3` / `gpt_neox.layers.3` -> (3, "block");
    `model.layers.3.self_attn` -> (3, "attn"); None without a layer number."""
    parts = path.split(".")
    numbers = [i for i, p in enumerate(parts) if p.isdigit()]
    if not numbers:
        return None
    at = numbers[-1]
    layer, rest = int(parts[at]), parts[at + 1 :]
    if not rest:
        return HfModule(layer, "block")
    if rest[0] == _HF_MLP:
        return HfModule(layer, "mlp")
    if rest[0] in _HF_ATTENTION:
        return HfModule(layer, "attn")
    return HfModule(layer, "other")


def from_hf_module(path: str, transcode: bool) -> tuple[str, str] | None:
    """TL4 (in_hook, out_hook) of a dictionary on the Hugging Face module `path` (sparsify's
    hookpoint), on a pre-norm model (`module_output` renames the writes for post-norm ones):

        transcoder on an MLP      blocks.3.ln2.hook_out -> blocks.3.hook_mlp_out
        SAE on an MLP output      blocks.3.hook_mlp_out
        SAE on an attention out   blocks.3.hook_attn_out
        transcoder on a layer     blocks.3.hook_resid_pre -> blocks.3.hook_resid_post
        SAE on a layer's output   blocks.3.hook_resid_post

    The MLP's input is the norm's output, `ln2.hook_out` (Hugging Face has no hook between the
    norm's scale and its weight). None where the path names no such module."""
    part = hf_module_part(path)
    if part is None:
        return None
    layer, kind = part
    if kind == "mlp":
        out = block_hook(layer, "hook_mlp_out")
        return (block_hook(layer, "ln2.hook_out"), out) if transcode else (out, out)
    if kind == "attn" and not transcode:
        return block_hook(layer, "hook_attn_out"), block_hook(layer, "hook_attn_out")
    if kind == "block":
        post = block_hook(layer, "hook_resid_post")
        return (block_hook(layer, "hook_resid_pre"), post) if transcode else (post, post)
    return None
