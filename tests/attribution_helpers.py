"""Shared by the attribution tests: random dictionaries and an independent intervention.

`frozen_effect` is written without the attribution code: it runs the model with attention
patterns, norm scales and every dictionary's (out - skip) held at their clean values (the
local replacement model), adds `delta * source vector` at one source, and returns how much
each feature pre-activation and logit direction moved.
"""

from __future__ import annotations

import torch

from replacement.dictionary import Dictionary
from replacement.hooks import layer_hooks


def random_transcoders(model, activation="relu", skip=True, n_features=48, seed=0, **params):
    """One random (skip) transcoder per layer, biased so that a fair share of features fire."""
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = []
    for layer in range(model.cfg.n_layers):
        hooks = layer_hooks(layer)
        tc = Dictionary(
            d,
            d,
            n_features,
            hooks.mlp_in,
            hooks.mlp_out,
            activation,
            skip=skip,
            activation_params=params,
            dtype=model.W_E.dtype,
        )
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_features, generator=gen) / d**0.5)
            tc.b_enc.copy_(torch.rand(n_features, generator=gen) * 0.5)
            tc.W_dec.copy_(torch.randn(n_features, d, generator=gen) * 0.1)
            tc.b_dec.copy_(torch.randn(d, generator=gen) * 0.01)
            if skip:
                tc.W_skip.copy_(torch.randn(d, d, generator=gen) * 0.2 / d**0.5)
            if activation == "jumprelu":
                tc.activation.log_threshold.fill_(torch.tensor(0.05).log().item())
        out.append(tc.to(model.W_E.dtype).eval())
    return out


@torch.no_grad()
def frozen_effect(model, dictionaries, tokens, source, delta, targets):
    """Change of each target's readout per unit of `delta * source` (one source)."""
    return frozen_effects(model, dictionaries, tokens, [source], delta, targets)[0]


@torch.no_grad()
def frozen_effects(model, dictionaries, tokens, sources, delta, targets):
    """Change of each target's readout when `delta * source` is added, in the frozen model,
    divided by delta: [n_sources, n_targets] (float64).

    source: ("feature", dict_index, pos, feature) | ("error", dict_index, pos) | ("token", pos)
    targets: list of ("feature", dict_index, pos, feature) | ("logit", direction[d_model])
    """
    n_layers = model.cfg.n_layers
    clean: dict[str, torch.Tensor] = {}
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    names += [n for n in model.hook_dict if n.endswith("hook_scale")]
    for d in dictionaries:
        names += [d.in_hook, d.out_hook]
    names += ["hook_embed", "ln_final.hook_out"]

    def run(perturb: bool, source=None, delta: float = 0.0):
        seen: dict[str, torch.Tensor] = {}
        incoming: dict[str, torch.Tensor] = {}

        def make(name):
            def hook(act, hook):
                incoming[name] = act
                if name.endswith(("hook_pattern", "hook_scale")) and perturb:
                    act = clean[name]
                if name == "hook_embed" and perturb and source[0] == "token":
                    act = act.clone()
                    act[:, source[1]] += delta * clean[name][:, source[1]]
                for k, d in enumerate(dictionaries):
                    if name == d.out_hook and perturb:
                        x_now = seen[d.in_hook] if d.in_hook != d.out_hook else act
                        act = clean[name] - d.skip(clean[d.in_hook]) + d.skip(x_now)
                        if source[0] in ("feature", "error") and source[1] == k:
                            pos = source[2]
                            x = clean[d.in_hook][0, pos]
                            if source[0] == "feature":
                                a = d.encode(x)[source[3]]
                                vec = a * d.W_dec[source[3]]
                            else:
                                vec = clean[name][0, pos] - _reconstruction(dictionaries, k, pos)
                            act = act.clone()
                            act[:, pos] += delta * vec
                        if source[0] == "feature":  # a cross-layer feature's later writes
                            src = dictionaries[source[1]]
                            for hook, w_dec in getattr(src, "later_decoders", ()):
                                if hook == name:
                                    x = clean[src.in_hook][0, source[2]]
                                    act = act.clone()
                                    act[:, source[2]] += (
                                        delta * src.encode(x)[source[3]] * w_dec[source[3]]
                                    )
                seen[name] = act
                return act

            return hook

        with model.hooks(fwd_hooks=[(n, make(n)) for n in dict.fromkeys(names)]):
            model(tokens.unsqueeze(0))
        if not perturb:
            clean.update(seen)
        # encoders read what arrives at their hook (for an SAE, before it is replaced)
        return {**seen, **{d.in_hook: incoming[d.in_hook] for d in dictionaries}}

    def readouts(run_out):
        """What each target reads, before its encoder column or direction is applied."""
        out = []
        for target in targets:
            if target[0] == "feature":
                out.append(run_out[dictionaries[target[1]].in_hook][0, target[2]].double())
            else:
                out.append(run_out["ln_final.hook_out"][0, -1].double())
        return out

    def columns():
        for target in targets:
            if target[0] == "feature":
                yield dictionaries[target[1]].W_enc[:, target[3]].double()
            else:
                yield target[1].double()

    def _reconstruction(dicts, k, pos):
        """Dictionary k's output at `pos` from clean inputs, with any cross-layer writes into it."""
        d = dicts[k]
        out = d(clean[d.in_hook][0, pos])
        for other in dicts:
            for hook, w_dec in getattr(other, "later_decoders", ()):
                if hook == d.out_hook:
                    out = out + other.encode(clean[other.in_hook][0, pos]) @ w_dec
        return out

    run(False)  # capture the clean values
    # the baseline goes through the same (frozen) code path as the perturbed runs, so that
    # float rounding of norms computed in float32 by some models cancels
    base = readouts(run(True, ("token", 0), 0.0))
    effects = []
    for source in sources:
        moved = readouts(run(True, source, delta))
        effects.append([float((m - b) @ w) for m, b, w in zip(moved, base, columns(), strict=True)])
    return torch.tensor(effects, dtype=torch.float64) / delta
