"""`sparse-circuits features`: build a dictionary set's feature atlas and its browsable pages.

    sparse-circuits features --dictionaries skip_transcoder --out atlas_out
    sparse-circuits features --zoo            # rebuild the atlases the zoo ships

`--out DIR` receives `atlas.json` + `atlas.safetensors` (load with `FeatureAtlas.load`) and
`index.html` with one `layer_{l}.html` per layer. `--zoo` rebuilds the shipped atlases of the
named (default: every) zoo set into `replacement/zoo/atlases/<set>/` with `ZOO_SETTINGS`, over
the default model's held-out corpus: the command that made the shipped files.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replacement.output_folder import OutputFolder, add_overwrite_flag, owned
from replacement.validation import int_at_least, nonnegative_int, positive_int

if TYPE_CHECKING:  # the atlas code loads torch: only when the command runs
    from replacement.atlas.build import AtlasSettings

ZOO_SETTINGS = dict(
    n_top=12, window_before=9, window_after=2, n_bands=4, per_band=2, n_logit_tokens=8
)
"""`AtlasSettings` of the shipped atlases: what they keep per feature (sized to fit the zoo's
40 MB budget)."""


def _summary(atlas, seconds: float) -> str:
    lines = [f"{atlas!r} built in {seconds:.1f} s"]
    for layer, entry in sorted(atlas.layers.items()):
        alive = [f for f, label in enumerate(entry.labels) if label != "dead"]
        examples = ", ".join(f"F{f} {entry.labels[f]}" for f in alive[:3])
        lines.append(
            f"  layer {layer}: {len(alive)} of {entry.n_features} features fired; e.g. {examples}"
        )
    return "\n".join(lines)


def build_one(
    model: Any,
    set_name: str,
    out: Path | OutputFolder,
    settings: AtlasSettings,
    args: argparse.Namespace,
) -> None:
    """Build and write one set's atlas (and its pages unless --no-pages)."""
    from replacement.atlas.build import build_atlas
    from replacement.atlas.pages import write_atlas_pages
    from replacement.formats.detect import load_dictionaries

    dictionaries = load_dictionaries(set_name, model=model)
    start = time.perf_counter()
    atlas = build_atlas(
        model,
        dictionaries,
        args.corpus,
        settings,
        ctx_len=args.ctx_len,
        max_tokens=args.max_tokens,
        verbose=not args.quiet,
    )
    print(_summary(atlas, time.perf_counter() - start))
    with owned(out, command="features", legacy=_atlas_entry) as folder:
        stage = folder.stage()  # the new atlas and pages are swapped in whole
        atlas.save(stage)
        pages = [] if args.no_pages else write_atlas_pages(atlas, stage)
        folder.commit()
    print(f"wrote {folder.path / 'atlas.json'} and {folder.path / 'atlas.safetensors'}")
    if pages:
        print(f"wrote {folder.path / pages[0].name} and {len(pages) - 1} layer pages")


def _atlas_entry(path: Path) -> bool:
    """Files of an atlas folder written before output markers (the zoo's, say)."""
    return path.name in ("atlas.json", "atlas.safetensors", "index.html") or bool(
        re.fullmatch(r"layer_\d+\.html", path.name)
    )


def run_features(args: argparse.Namespace) -> int:
    """Build the atlas of --dictionaries into --out, or the zoo's atlases with --zoo."""
    from replacement.atlas.build import AtlasSettings
    from replacement.atlas.corpus import check_corpus
    from replacement.errors import SparseCircuitsError
    from replacement.formats.detect import describe
    from replacement.model import load_model

    if not args.zoo and (args.dictionaries is None or args.out is None):
        raise SparseCircuitsError("features needs --dictionaries SET and --out DIR (or --zoo)")
    # the flags alone decide these: checked before the model loads
    if args.dictionaries is not None:
        describe(args.dictionaries)  # a missing location fails now
    if args.corpus is not None:
        check_corpus(args.corpus, "--corpus")

    def checked_model() -> Any:
        model = load_model(args.model)
        if args.ctx_len is not None and args.ctx_len > int(model.cfg.n_ctx):
            raise SparseCircuitsError(
                f"--ctx-len {args.ctx_len} exceeds the model's context of {model.cfg.n_ctx} "
                f"tokens; use --ctx-len {model.cfg.n_ctx} or less"
            )
        return model

    if not args.zoo:  # checked, refused if not ours, and locked before the model loads
        with OutputFolder(
            args.out, command="features", overwrite=args.overwrite, legacy=_atlas_entry
        ) as out:
            model = checked_model()
            settings = AtlasSettings(n_top=args.top, seed=args.seed)
            build_one(model, args.dictionaries, out, settings, args)
        return 0
    from replacement.atlas.lookup import shipped_atlas_path
    from replacement.zoo import list_dictionary_sets

    model = checked_model()
    names = [args.dictionaries] if args.dictionaries else []
    names = names or [entry.name for entry in list_dictionary_sets()]
    settings = AtlasSettings(**ZOO_SETTINGS, seed=args.seed)
    args.no_pages = True
    for name in names:
        build_one(model, name, shipped_atlas_path(name), settings, args)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `features` subcommand."""
    p = subparsers.add_parser(
        "features",
        help="feature atlas of a dictionary set: top contexts, labels, browsable pages",
        description="Run a corpus through the model and a dictionary set, keep per feature "
        "its top contexts, quantile-band examples, frequency, histogram, promoted tokens and a "
        "label, and write the atlas with a static page per layer.",
    )
    p.add_argument(
        "--dictionaries",
        default=None,
        help="dictionary set name or folder (required unless --zoo: then default every zoo set)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (required unless --zoo; default: none)"
    )
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded model), a model folder or HF name (default: %(default)s)",
    )
    add_overwrite_flag(p)
    p.add_argument(
        "--corpus",
        default=None,
        help="token file (.safetensors/.pt/.npy), text file or folder (default: the default "
        "model's held-out corpus)",
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="number of corpus tokens used at most (default: all of the corpus)",
    )
    p.add_argument(
        "--ctx-len",
        type=int_at_least(3),
        default=None,
        help="row length in tokens, BOS included (default: 128, or the model's n_ctx if shorter)",
    )
    p.add_argument(
        "--top",
        type=positive_int,
        default=16,
        help="number of top contexts kept per feature (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the quantile-band sample (default: %(default)s)",
    )
    p.add_argument("--no-pages", action="store_true", help="write the atlas files only")
    p.add_argument(
        "--zoo",
        action="store_true",
        help="rebuild the shipped atlases (of --dictionaries, or every zoo set) in the package",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_features)
