"""Offline interpretability scores: known answers on synthetic units, held-out discipline,
concept labels, probing, statistics, the atlas's display of scores, the pipeline end to end."""

from __future__ import annotations

import inspect
import re
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from analysis.interpretability.concepts import PYTHON_CONCEPTS, callable_labeller, python_syntax
from analysis.interpretability.corpus import check_disjoint, labelled_split
from analysis.interpretability.explainer import explain
from analysis.interpretability.probing import auroc
from analysis.interpretability.run import InterpretSettings, interpret, score_source
from analysis.interpretability.sampling import SampleSettings
from analysis.interpretability.stats import bootstrap_mean, matched_difference
from analysis.interpretability.units import UnitActs
from replacement.errors import SparseCircuitsError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FIT_FILES = ("textwrap.py", "shlex.py", "bisect.py")
SCORE_FILES = ("heapq.py", "colorsys.py", "graphlib.py")
SETTINGS = InterpretSettings(sample=SampleSettings(window=16, min_contexts=8))


class WordTokenizer:
    """Words, runs of spaces/newlines and single punctuation marks as tokens (id 0 = BOS)."""

    def __init__(self, texts):
        pieces = sorted({p for t in texts for p in self.split(t)})
        self.vocab = ["<bos>", *pieces]
        self.ids = {p: i for i, p in enumerate(self.vocab)}

    @staticmethod
    def split(text):
        return re.findall(r" ?[A-Za-z_][A-Za-z_0-9]*|\d+|\s+|.", text)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.ids[p] for p in self.split(text)]}


@pytest.fixture(scope="module")
def splits():
    fit_texts = [(STDLIB / f).read_text() for f in FIT_FILES]
    score_texts = [(STDLIB / f).read_text() for f in SCORE_FILES]
    tok = WordTokenizer(fit_texts + score_texts)
    fit = labelled_split("fit", fit_texts, tok, tok.vocab, 0, 64)
    score = labelled_split("score", score_texts, tok, tok.vocab, 0, 64)
    return fit, score, tok


def units_from_masks(masks: np.ndarray, seed: int = 0) -> UnitActs:
    """UnitActs of units firing exactly where `masks` [units, tokens] is True (random values)."""
    unit, token = np.nonzero(masks)
    value = np.random.default_rng(seed).uniform(0.5, 2.0, unit.size).astype(np.float32)
    return UnitActs(
        unit.astype(np.int32),
        token,
        value,
        masks.shape[0],
        masks.shape[1],
        np.zeros(masks.shape[0], int),
        np.arange(masks.shape[0]),
    )


def indicator_masks(split, concepts, tokens):
    flat = split.labels.reshape(-1, len(split.concepts))
    tok = split.tokens.reshape(-1).numpy()
    masks = [flat[:, split.concepts.index(c)] for c in concepts]
    masks += [tok == t for t in tokens]
    out = np.stack(masks)
    out[:, tok == 0] = False
    return out


INDICATOR_CONCEPTS = ("comment", "keyword", "def_name", "number", "self", "builtin", "operator")


def test_exact_concept_indicators_score_about_one(splits):
    fit, score, tok = splits
    words = [tok.ids[w] for w in ("return", "if", "for")]
    fit_acts = units_from_masks(indicator_masks(fit, INDICATOR_CONCEPTS, words), 1)
    score_acts = units_from_masks(indicator_masks(score, INDICATOR_CONCEPTS, words), 2)
    r = score_source("ideal", "trained", "", fit_acts, score_acts, fit, score, tok.vocab, SETTINGS)
    assert r.scored.sum() >= 8
    combined = (r.detection + r.fuzzing)[r.scored] / 2
    assert combined.min() >= 0.9 and combined.mean() >= 0.97, r.explanation
    # the explanation names the concept or the word
    assert r.explanation[INDICATOR_CONCEPTS.index("comment")] == "[comment]"
    assert (
        r.scored[len(INDICATOR_CONCEPTS)] and r.explanation[len(INDICATOR_CONCEPTS)] == "'return'"
    )
    # probing recovers each concept exactly from its indicator unit
    for i, c in enumerate(INDICATOR_CONCEPTS):
        per = r.probing["per_concept"][c]
        assert per["best_unit"] == i and per["f1"] == pytest.approx(1.0)
        assert per["auroc"] == pytest.approx(1.0)
        assert per["probe_accuracy"]["1"] >= 0.99
        assert r.probing["unit_best_concept"][i] == PYTHON_CONCEPTS.index(c)


def test_random_units_score_near_chance_on_held_out_data(splits):
    fit, score, tok = splits
    rng = np.random.default_rng(3)
    n = 60
    fit_acts = units_from_masks(rng.random((n, fit.n_tokens)) < 0.01, 4)
    score_acts = units_from_masks(rng.random((n, score.n_tokens)) < 0.01, 5)
    r = score_source("noise", "random", "", fit_acts, score_acts, fit, score, tok.vocab, SETTINGS)
    assert r.scored.sum() >= 50
    combined = (r.detection + r.fuzzing)[r.scored] / 2
    assert abs(combined.mean() - 0.5) < 0.04, combined.mean()


def test_explainer_never_sees_the_scoring_split(splits):
    fit, score, tok = splits
    # structurally: the explainer takes the fit split's acts, table and examples only
    assert list(inspect.signature(explain).parameters) == [
        "acts",
        "table",
        "examples",
        "settings",
        "block",
    ]
    words = [tok.ids[w] for w in ("return", "if")]
    fit_acts = units_from_masks(indicator_masks(fit, INDICATOR_CONCEPTS, words), 1)
    score_acts = units_from_masks(indicator_masks(score, INDICATOR_CONCEPTS, words), 2)
    a = score_source("a", "trained", "", fit_acts, score_acts, fit, score, tok.vocab, SETTINGS)
    # scoring on garbage activations changes the scores, never the explanations
    rng = np.random.default_rng(0)
    noise = units_from_masks(rng.random((fit_acts.n_units, score.n_tokens)) < 0.02, 9)
    b = score_source("b", "trained", "", fit_acts, noise, fit, score, tok.vocab, SETTINGS)
    assert a.explanation == b.explanation and np.array_equal(a.atoms, b.atoms)
    assert np.nanmean(b.detection) < np.nanmean(a.detection) - 0.2
    with pytest.raises(SparseCircuitsError, match="share"):
        check_disjoint(fit, fit)


def test_python_labeller_marks_syntax():
    toks = [
        "import",
        " os",
        "\n",
        "class",
        " A",
        "(",
        "B",
        "):",
        "\n   ",
        ' """Doc."""',
        "\n   ",
        " def",
        " f",
        "(",
        "self",
        ",",
        " x",
        "=",
        "1",
        "):",
        "\n       ",
        " # c",
        "\n       ",
        " return",
        " len",
        "(",
        "x",
        "[",
        "0",
        "]",
        ")",
        " +",
        " self",
        ".",
        "a",
        "\n",
    ]
    out = python_syntax(toks)
    has = {
        t + str(i): {c for c, v in zip(out.concepts, row, strict=True) if v}
        for i, (t, row) in enumerate(zip(toks, out.labels, strict=True))
    }
    assert {"keyword", "import_line", "line_start", "indent_0"} <= has["import0"]
    assert "class_name" in has[" A4"] and "bracket_depth_1" in has["B6"]
    assert {"docstring", "string", "indent_1", "line_start"} <= has[' """Doc."""9']
    assert "def_name" in has[" f12"] and "self" in has["self14"]
    assert "operator" in has["=17"] and "number" in has["118"]
    assert "comment" in has[" # c21"]
    assert {"keyword", "line_start", "indent_2"} <= has[" return23"]
    assert "builtin" in has[" len24"] and "bracket_depth_2+" in has["028"]
    assert "after_dot" in has["a34"] and "builtin" not in has["a34"]


def test_user_labeller_and_bad_output():
    lab = callable_labeller(lambda toks: {"upper": [t.isupper() for t in toks]})
    out = lab(["A", "b", "C"])
    assert out.concepts == ("upper",) and out.labels[:, 0].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="one label per token"):
        callable_labeller(lambda toks: {"x": [True]})(["a", "b"])


def test_auroc_equals_the_pairwise_count():
    rng = np.random.default_rng(0)
    n_tokens = 200
    fire = rng.random(n_tokens) < 0.3
    values = np.where(fire, rng.random(n_tokens), 0.0)
    labels = rng.random(n_tokens) < 0.4
    pos, neg = values[labels], values[~labels]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        pos.size * neg.size
    )
    got = auroc(values[fire], labels[fire], int(labels.sum()), int((~labels).sum()))
    assert got == pytest.approx(brute)


def test_intervals_and_density_matched_difference():
    rng = np.random.default_rng(0)
    v = rng.normal(0.7, 0.1, 2000)
    mean, lo, hi = bootstrap_mean(v)
    assert lo < 0.7 < hi and hi - lo < 0.02
    # a scores higher than b only because it fires more: matched within bins, no difference
    freq_a = np.r_[np.full(500, 0.002), np.full(1500, 0.05)]
    freq_b = np.r_[np.full(1500, 0.002), np.full(500, 0.05)]
    a = np.where(freq_a > 0.01, 0.8, 0.6) + rng.normal(0, 0.01, 2000)
    b = np.where(freq_b > 0.01, 0.8, 0.6) + rng.normal(0, 0.01, 2000)
    point, lo, hi = matched_difference(a, freq_a, b, freq_b)
    assert abs(point) < 0.005 and lo < 0 < hi
    assert a.mean() - b.mean() > 0.09  # the raw difference is all density


def test_atlas_shows_scores_and_better_labels(tmp_path):
    from replacement.atlas import FeatureAtlas
    from replacement.atlas.scores import save_scores
    from replacement.zoo import ATLAS_DIR

    folder = tmp_path / "atlas"
    shutil.copytree(ATLAS_DIR / "transcoder", folder)
    base = FeatureAtlas.load(folder)
    n = base.layers[0].n_features
    entry = {
        "fingerprint": base.layers[0].fingerprint,
        "explanation": ["[comment]"] * n,
        "detection": [0.91] * n,
        "fuzzing": [0.87] * n,
        "concept": ["comment"] * n,
        "concept_f1": [0.5] * n,
        "better_label": ["[comment]"] + [None] * (n - 1),
    }
    save_scores(folder, {0: entry, 1: {**entry, "fingerprint": "other weights"}}, {})
    atlas = FeatureAtlas.load(folder)
    assert set(atlas.scores) == {0}  # scores of other weights are ignored
    promoted = base.label(0, 0).partition(" -> ")[2]
    assert atlas.label(0, 0) == "[comment]" + (f" -> {promoted}" if promoted else "")
    assert atlas.label(0, 1) == base.label(0, 1)
    card = atlas[0, 1].to_html()
    assert "explained as <b>[comment]</b>" in card and "detection 0.91" in card
    assert atlas[1, 0].record()["interpretability"] is None


def test_interpret_end_to_end_on_a_tiny_model(tiny_gpt2, tmp_path):
    """Sets, random controls and neurons through one capture; report and atlas files written."""
    from analysis.interpretability.atlas_scores import write_atlas_scores
    from analysis.interpretability.corpus import text_split
    from analysis.interpretability.report import write_interpretability
    from tests.attribution_helpers import random_transcoders

    (tmp_path / "fit.py").write_text((STDLIB / "textwrap.py").read_text()[:12000])
    (tmp_path / "score.py").write_text((STDLIB / "heapq.py").read_text()[:12000])
    fit = text_split("fit", tmp_path / "fit.py", tiny_gpt2, 32)
    score = text_split("score", tmp_path / "score.py", tiny_gpt2, 32)
    ds = random_transcoders(tiny_gpt2, "topk", n_features=24, seed=5, k=4)
    results = interpret(tiny_gpt2, {"tc": ds}, fit, score, SETTINGS, verbose=False)
    assert set(results) == {"tc", "tc:random", "neurons"}
    assert len(results["neurons"].scored) == 2 * tiny_gpt2.cfg.d_mlp
    # neurons are sparsified to the dictionaries' L0 (4 per token and layer)
    assert results["neurons"].frequency.sum() == pytest.approx(2 * 4 * (1 - 1 / 32), rel=0.05)
    files = write_interpretability(results, tmp_path / "out", n_boot=50)
    assert "| `tc:random` |" in files["markdown"].read_text()
    path = write_atlas_scores(results["tc"], ds, tmp_path / "atlas", {})
    assert path.name == "interpretability.json"
    # the compare report's section, from an interpret results.json
    from analysis.interpretability.report import add_to_compare_report
    from replacement.atomic import write_json

    write_json(tmp_path / "results.json", {"results": {n: r.to_dict() for n, r in results.items()}})
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "report.md").write_text("# compare\n")
    add_to_compare_report(None, {"tc": ds}, tmp_path / "cmp", str(tmp_path / "results.json"))
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert report.startswith("# compare") and "| `tc:random` |" in report


def test_bad_labeller_spec_is_refused_before_work(tmp_path, capsys):
    from sparse_circuits_cli import main

    rc = main(
        [
            "interpret",
            "--dictionaries",
            "transcoder",
            "--out",
            str(tmp_path / "o"),
            "--labeller",
            "no_colon_here",
        ]
    )
    assert rc == 1 and "MODULE:FUNCTION" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
