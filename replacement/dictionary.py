"""One base class for every sparse dictionary: SAEs, transcoders and skip transcoders.

An SAE reads and writes the same hook (two names of one tensor, such as `hook_resid_post` and
`hook_out`, count as one and are stored as the input's); a transcoder reads `in_hook` (e.g. the MLP input after
its norm) and predicts `out_hook` (the MLP output). A skip transcoder adds an affine skip
connection `x @ W_skip`. Kinds differ only in the activation (ReLU, TopK, BatchTopK,
JumpReLU, or the gated encoder of `GatedDictionary`).

    pre    = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc       [.., F]
    acts   = activation(pre)                                            [.., F]
    y_hat  = acts @ W_dec + b_dec (+ x @ W_skip)                        [.., d_out]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from replacement.activations import Activation, make_activation
from replacement.errors import SparseCircuitsError
from replacement.hook_table import same_on_every_model
from replacement.sparse import SparseActs

KINDS = ("sae", "transcoder", "skip_transcoder")


class Dictionary(nn.Module):
    """A sparse dictionary at one site of a model.

    Shapes: `W_enc [d_in, F]`, `b_enc [F]`, `W_dec [F, d_out]`, `b_dec [d_out]`,
    `W_skip [d_in, d_out]` (skip transcoders only, else None).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_features: int,
        in_hook: str,
        out_hook: str | None = None,
        activation: Activation | str = "relu",
        *,
        skip: bool = False,
        apply_b_dec_to_input: bool | None = None,
        model_name: str = "",
        activation_params: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        out_hook = out_hook or in_hook
        if same_on_every_model(in_hook, out_hook):
            out_hook = in_hook  # two names of one tensor: it reads what it writes, an SAE
        if in_hook == out_hook and d_in != d_out:
            raise ValueError(f"an SAE at {in_hook!r} needs d_in == d_out, got {d_in} and {d_out}")
        self.d_in, self.d_out, self.n_features = int(d_in), int(d_out), int(n_features)
        self.in_hook, self.out_hook = in_hook, out_hook
        self.model_name = model_name
        self.metadata: dict[str, Any] = dict(metadata or {})
        # SAEs subtract b_dec before encoding (Bricken et al.); transcoders cannot (d_in != d_out)
        self.apply_b_dec_to_input = (
            (in_hook == out_hook) if apply_b_dec_to_input is None else apply_b_dec_to_input
        )
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(d_in, n_features, **kw))
        self.b_enc = nn.Parameter(torch.zeros(n_features, **kw))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, **kw)) if skip else None
        if isinstance(activation, str):
            activation = make_activation(activation, n_features, **(activation_params or {}))
        self.activation = activation.to(**kw)

    # ---- description -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """ "sae", "transcoder" or "skip_transcoder"."""
        if self.in_hook == self.out_hook:
            return "sae"
        return "skip_transcoder" if self.W_skip is not None else "transcoder"

    @property
    def activation_name(self) -> str:
        """ "relu", "topk", "batchtopk", "jumprelu" or "gated"."""
        return self.activation.name

    @property
    def is_transcoder(self) -> bool:
        """True when the dictionary reads one hook and writes another."""
        return self.in_hook != self.out_hook

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (everything but the tensors)."""
        return {
            "kind": self.kind,
            "activation": self.activation_name,
            "activation_params": self.activation.params(),
            "in_hook": self.in_hook,
            "out_hook": self.out_hook,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_features": self.n_features,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "model_name": self.model_name,
            "dtype": str(self.W_enc.dtype).removeprefix("torch."),
            "metadata": self.metadata,
        }

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, activation={self.activation_name}, {self.in_hook} -> "
            f"{self.out_hook}, d_in={self.d_in}, d_out={self.d_out}, F={self.n_features}"
        )

    # ---- dense path ------------------------------------------------------------------------
    def _encoder_input(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... F"]:
        """Encoder pre-activations."""
        return self._encoder_input(x) @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... F"]:
        """Dense feature activations."""
        return self.activation(self.pre_acts(x))

    def decode(self, acts: Float[Tensor, "... F"]) -> Float[Tensor, "... d_out"]:
        """Reconstruction from activations, without the skip connection."""
        return acts @ self.W_dec + self.b_dec

    def skip(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The linear skip path `x @ W_skip` (zeros without one)."""
        if self.W_skip is None:
            return x.new_zeros(*x.shape[:-1], self.d_out)
        return x @ self.W_skip

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """Prediction of the out_hook activation from the in_hook activation."""
        y = self.decode(self.encode(x))
        return y + x @ self.W_skip if self.W_skip is not None else y

    # ---- sparse path -----------------------------------------------------------------------
    def encode_sparse(self, x: Float[Tensor, "tokens d_in"], chunk_size: int = 4096) -> SparseActs:
        """Non-zero activations, computed `chunk_size` tokens at a time.

        Never holds more than a [chunk_size, F] dense block, and equals `encode` on every token.
        BatchTopK in training mode needs the whole batch and is refused here.
        """
        if self.training and self.activation_name == "batchtopk":
            raise RuntimeError("BatchTopK's sparse path needs eval mode (its batch rule is global)")
        x = x.reshape(-1, self.d_in)
        parts = []
        for start in range(0, x.shape[0], chunk_size):
            block = x[start : start + chunk_size]
            tok, feat, val = self._sparse_block(block)
            parts.append(SparseActs(tok, feat, val, block.shape[0], self.n_features))
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return SparseActs(empty, empty, x.new_zeros(0), 0, self.n_features)
        return SparseActs.concat(parts, self.n_features)

    def _sparse_block(self, block: Float[Tensor, "tokens d_in"]):
        return self.activation.sparse_block(self.pre_acts(block))

    def decode_sparse(self, acts: SparseActs) -> Float[Tensor, "tokens d_out"]:
        """Reconstruction from sparse activations (no dense [tokens, F] tensor)."""
        out = F.embedding_bag(
            acts.feature_idx,
            self.W_dec,
            acts.offsets(),
            mode="sum",
            per_sample_weights=acts.values.to(self.W_dec.dtype),
        )
        return out + self.b_dec

    def forward_sparse(
        self, x: Float[Tensor, "tokens d_in"], chunk_size: int = 4096
    ) -> tuple[Float[Tensor, "tokens d_out"], SparseActs]:
        """`forward` through the sparse path; also returns the sparse activations."""
        x = x.reshape(-1, self.d_in)
        acts = self.encode_sparse(x, chunk_size)
        y = self.decode_sparse(acts)
        if self.W_skip is not None:
            y = y + x @ self.W_skip
        return y, acts

    # ---- maintenance -----------------------------------------------------------------------
    @torch.no_grad()
    def check_finite(self, source: str = "dictionary") -> None:
        """Raise if any weight is NaN or infinite, naming the tensor."""
        for name, tensor in self.named_parameters():
            if not torch.isfinite(tensor).all():
                bad = (~torch.isfinite(tensor)).sum().item()
                raise SparseCircuitsError(f"{source}: tensor {name!r} has {bad} NaN/inf values")
        for name, tensor in self.named_buffers():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise SparseCircuitsError(f"{source}: buffer {name!r} has NaN/inf values")


class GatedDictionary(Dictionary):
    """Gated SAE (Rajamanoharan et al. 2024); `W_enc` is W_gate and `b_enc` is b_gate.

    pi_gate = (x - b_dec) W_gate + b_gate
    pi_mag  = (x - b_dec) (exp(r_mag) * W_gate) + b_mag
    acts    = 1[pi_gate > 0] * ReLU(pi_mag)
    """

    def __init__(self, d_in: int, d_out: int, n_features: int, in_hook: str, out_hook=None, **kw):
        kw.pop("activation", None)
        super().__init__(d_in, d_out, n_features, in_hook, out_hook, activation="relu", **kw)
        dtype, device = self.W_enc.dtype, self.W_enc.device
        self.r_mag = nn.Parameter(torch.zeros(n_features, dtype=dtype, device=device))
        self.b_mag = nn.Parameter(torch.zeros(n_features, dtype=dtype, device=device))

    @property
    def activation_name(self) -> str:
        return "gated"

    def gate_pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... F"]:
        """pi_gate."""
        return self._encoder_input(x) @ self.W_enc + self.b_enc

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... F"]:
        """pi_mag, the magnitude pre-activations (gated by `gate_pre_acts`)."""
        return self._encoder_input(x) @ (self.W_enc * self.r_mag.exp()) + self.b_mag

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... F"]:
        """Feature activations: the magnitude path's ReLU where the gate is open (pi_gate > 0)."""
        return (self.gate_pre_acts(x) > 0) * torch.relu(self.pre_acts(x))

    def _sparse_block(self, block):
        acts = self.encode(block)
        token_idx, feature_idx = acts.nonzero(as_tuple=True)
        return token_idx, feature_idx, acts[token_idx, feature_idx]
