"""A finished training run's outputs: the dictionary files, report.json and card.json, and the
one line that sums them up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from replacement.atomic import write_json
from training.run_files import BRANCH_FILE, CHECKPOINT_FILE, LAYER_EXTS, METRICS_FILE

if TYPE_CHECKING:
    from training.trainer import Trainer


def write_outputs(trainer: Trainer) -> dict[str, Any]:
    """Evaluate `trainer`'s dictionaries (if configured), save them with their metrics and
    write the card; returns the card. Rank 0 only."""
    from replacement.formats.native import save_dictionary
    from replacement.loss import spliced_loss

    cfg, out_dir, folder = trainer.config, trainer.out_dir, trainer._folder
    tokens_seen = trainer.step * trainer.tokens_per_step
    written = [f"layer_{layer}.{ext}" for layer in trainer.dictionaries for ext in LAYER_EXTS]
    written += ["card.json", METRICS_FILE, CHECKPOINT_FILE]
    written += [BRANCH_FILE] if (out_dir / BRANCH_FILE).exists() else []
    written += ["report.json"] if cfg.evaluate else []
    if folder is not None:
        folder.claim(written)  # listed before written: a kill leaves them ours
    report = None
    if cfg.evaluate:
        tokens = trainer.validation_tokens()
        dictionaries = list(trainer.dictionaries.values())
        report = spliced_loss(trainer.model, dictionaries, tokens, verbose=cfg.verbose)
        write_json(out_dir / "report.json", report.to_dict())
    layers_card = []
    for layer, d in trainer.dictionaries.items():
        train_m = trainer.last_metrics.get(f"layer_{layer}", {})
        final = {
            "layer": layer,
            "training_tokens": tokens_seen,
            "train_fvu": train_m.get("fvu"),
            "train_l0": train_m.get("l0"),
            "train_dead_share": train_m.get("dead_share"),
        }
        if report is not None:
            r = report.row(d.out_hook) if len(trainer.dictionaries) > 1 else report.all
            final.update(
                n_features=d.n_features,
                fvu=r.fvu,
                fvu_interval=r.fvu_interval,
                l0=r.l0,
                l0_interval=r.l0_interval,
                dead_share=r.dead_share,
                ce_increase=r.ce_increase,
                ce_increase_interval=r.ce_increase_interval,
                kl=r.kl,
                frac_recovered=r.recovered_zero,
                frac_recovered_interval=r.recovered_zero_interval,
                frac_recovered_mean=r.recovered_mean,
                shrinkage=r.shrinkage,
            )
        d.metadata = {**d.metadata, "training": cfg.to_dict(), "metrics": final}
        save_dictionary(d, out_dir / f"layer_{layer}")
        layers_card.append(final)
    card = {
        "description": (
            f"{cfg.kind} ({cfg.activation}, F={cfg.n_features}"
            + (f", k={cfg.k}" if cfg.activation in ("topk", "batchtopk") else "")
            + f") on {cfg.model}, objective {cfg.objective}, {tokens_seen:,} tokens"
        ),
        "model": cfg.model,
        "training": cfg.to_dict(),
        "layers": layers_card,
    }
    if report is not None:
        card["all"] = {k: v for k, v in vars(report.all).items() if k != "hooks"}
        card["eval_predictions"] = report.n_predictions
        # the mean over the dictionaries, resampled jointly (one dictionary: its own)
        card["fvu_mean_interval"] = report.mean_fvu_interval
    write_json(out_dir / "card.json", card)
    # an earlier run in this folder (other layers, or with a report) leaves no stale files
    if folder is not None:
        folder.commit_in_place(written)
    return card


def final_line(card: dict[str, Any], card_path: Path) -> str:
    """One line of a finished run's figures from its card: FVU, L0 and dead share (means over
    the dictionaries), CE increase with all of them spliced (with their intervals over the
    evaluated sequences where the card has them), and where the card went."""

    def mean(key: str) -> float | None:
        values = [row[key] for row in card["layers"] if row.get(key) is not None]
        return sum(values) / len(values) if values else None

    n = len(card["layers"])
    if "all" not in card:  # not evaluated: the last training step's figures
        fvu, l0, dead = mean("train_fvu"), mean("train_l0"), mean("train_dead_share")
        figures = [f"FVU {fvu:.4f}" if fvu is not None else "FVU n/a"]
        figures += [f"L0 {l0:.1f}" if l0 is not None else "L0 n/a"]
        figures += [f"dead {100 * dead:.1f}%" if dead is not None else "dead n/a"]
        return f"final (last training step, no evaluation): {'  '.join(figures)}; card {card_path}"
    ce, interval = card["all"]["ce_increase"], card["all"].get("ce_increase_interval")
    ce_text = f"{ce:+.4f}" + (f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "")
    fvu = card.get("fvu_mean_interval")
    fvu_text = f"{mean('fvu'):.4f}" + (f" [{fvu[0]:.4f}, {fvu[1]:.4f}]" if fvu else "")
    return (
        f"final ({card['eval_predictions']:,} held-out predictions): FVU {fvu_text}  "
        f"L0 {mean('l0'):.1f}  dead {100 * mean('dead_share'):.1f}%  CE increase {ce_text} nats "
        f"({'all ' + str(n) + ' dictionaries' if n > 1 else 'the dictionary'} spliced); "
        f"card {card_path}"
    )
