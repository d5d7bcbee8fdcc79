"""Train sparsify's skip transcoders for bench_train.py, in sparsify's own environment.

Run by bench_train.py as `PYTHON sparsify_runner.py JOB.pt` with the Python of a virtual
environment that has eai-sparsify (and its transformers/datasets); it imports nothing of this
project, so the two trainers need not share one environment. JOB.pt holds the token rows,
the held-out rows, the special token ids and the settings; the last stdout line is a JSON
object {"tokens_per_s", "fvu", "seconds", "tokens"}.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def _mask(tokens: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False
    for sid in special_ids:
        keep &= tokens != sid
    return keep


def _fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    y, y_hat = y.double(), y_hat.double()
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def main(job_path: str) -> None:
    import sparsify
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    job = torch.load(job_path, weights_only=False)
    a = job["args"]
    if a.get("threads"):
        torch.set_num_threads(int(a["threads"]))
    model = AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=torch.float32)
    model = model.to(a["device"]).eval()
    rows, val, specials = job["rows"], job["val"], job["special_ids"]
    layers = a["layers"]
    ds = Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    cfg = sparsify.TrainConfig(
        sparsify.SparseCoderConfig(
            num_latents=a["n_features"], k=a["k"], transcode=True, skip_connection=True
        ),
        batch_size=a["seqs"],
        loss_fn="fvu",
        optimizer="adam",
        lr=a["lr"],
        lr_warmup_steps=a["warmup"],
        auxk_alpha=1 / 32,
        dead_feature_threshold=a["dead_after"],
        exclude_tokens=list(specials),
        hookpoints=[f"h.{layer}.mlp" for layer in layers],
        log_to_wandb=False,
        save_every=10**9,
        save_dir=job["out_dir"],
        init_seeds=[int(a.get("seed", 0))],
    )
    trainer = sparsify.Trainer(cfg, ds, model)
    sync = torch.cuda.synchronize if a["device"].startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    trainer.fit()
    sync()
    seconds = time.perf_counter() - t0
    n_tokens = int((rows != job["bos"]).sum())  # sparsify excludes only the listed tokens
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for layer in layers:

        def hook(module, inputs, output, layer=layer):
            captured[layer] = (inputs[0].detach(), output.detach())

        handles.append(model.transformer.h[layer].mlp.register_forward_hook(hook))
    with torch.no_grad():
        model(val.to(a["device"]))
    for h in handles:
        h.remove()
    mask = _mask(val, specials).to(a["device"])
    fvus = []
    with torch.no_grad():
        for layer in layers:
            x, y = captured[layer]
            sae = trainer.saes[f"h.{layer}.mlp"]
            fvus.append(_fvu(y[mask], sae(x[mask].float()).sae_out.float()))
    result = {
        "tokens_per_s": n_tokens / seconds,
        "fvu": sum(fvus) / len(fvus),
        "seconds": seconds,
        "tokens": n_tokens,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
