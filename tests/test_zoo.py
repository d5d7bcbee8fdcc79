"""The shipped zoo: every set covers every layer, fits the budget, and its card is honest."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from replacement.formats.detect import load_dictionaries
from replacement.hooks import hook_layer
from replacement.loss import spliced_loss
from replacement.zoo import dictionary_set_path, list_dictionary_sets, list_models
from training.data import chunk_documents, special_token_ids, tokenize_documents
from training.default_model.corpus import heldout_paths, read_document, stdlib_dir
from training.zoo_recipe import COMMON, ZOO_SETS

BUDGET_BYTES = 40_000_000
"""The zoo's size budget: the default model plus every dictionary set."""
CARD_FIELDS = ("l0", "fvu", "ce_increase", "kl", "frac_recovered", "dead_share")


def test_every_set_covers_every_layer_within_the_budget():
    sets = {entry.name: entry for entry in list_dictionary_sets()}
    assert set(sets) == set(ZOO_SETS)
    total = sum(e.size_bytes for e in sets.values()) + sum(m.size_bytes for m in list_models())
    assert total <= BUDGET_BYTES, f"zoo is {total / 1e6:.1f} MB, budget {BUDGET_BYTES / 1e6} MB"
    budgets = set()
    for name, entry in sets.items():
        spec = ZOO_SETS[name]
        training = entry.card["training"]
        assert training["objective"] == spec["objective"] and training["kind"] == spec["kind"]
        rows = entry.card["layers"]
        assert [row["layer"] for row in rows] == COMMON["layers"]
        for row in rows:
            assert all(math.isfinite(row[key]) for key in CARD_FIELDS), (name, row)
            # e2e steps take whole rows: their token counts differ from the budget by < 1%
            assert row["training_tokens"] == pytest.approx(training["total_tokens"], rel=0.01)
        budgets.add(training["total_tokens"])
        dictionaries = load_dictionaries(entry.path)
        assert sorted(hook_layer(d.out_hook) for d in dictionaries) == COMMON["layers"]
        assert all(
            d.kind == spec["kind"] and d.n_features == COMMON["n_features"] for d in dictionaries
        )
    assert len(budgets) == 1, f"sets were trained on different token budgets: {budgets}"


def test_every_skip_transcoder_alone_recovers_most_of_the_loss():
    rows = {e.name: e.card for e in list_dictionary_sets()}["skip_transcoder"]["layers"]
    recovered = [round(row["frac_recovered"], 3) for row in rows]
    assert min(recovered) > 0.9, recovered


FRESH_ROWS = 32


@pytest.fixture(scope="module")
def heldout_rows(default_model) -> Callable[[int], torch.Tensor]:
    """rows(n) -> the first n validation rows of `load_token_data(default_model, None)`.

    Built as load_token_data builds them (held-out documents in list order, one BOS-separated
    stream) but from the held-out documents alone, and only as many as the rows need:
    tokenizing the whole training corpus to keep 2% of it took most of this module's time.
    """
    bos, _ = special_token_ids(default_model)
    ctx = COMMON["ctx_len"]
    docs: list[list[int]] = []
    cache: dict[int, torch.Tensor] = {}

    def rows(n: int) -> torch.Tensor:
        if n not in cache:
            paths = heldout_paths()
            # rows are a prefix of the stream: stop reading documents once there are enough
            stream = chunk_documents(docs, bos, ctx)
            while stream.shape[0] < n and len(docs) < len(paths):
                text = read_document(stdlib_dir(), paths[len(docs)]).text
                docs.extend(tokenize_documents(default_model, [text]))
                stream = chunk_documents(docs, bos, ctx)
            cache[n] = stream[:n]
        return cache[n]

    return rows


@pytest.mark.parametrize("name", ["skip_transcoder", "sae_e2e"])
def test_card_figures_hold_on_unseen_held_out_rows(default_model, heldout_rows, name):
    card = {e.name: e.card for e in list_dictionary_sets()}[name]
    evaluated = int(card["evaluated_on"].split()[0].replace(",", "")) // COMMON["ctx_len"]
    fresh = heldout_rows(evaluated + FRESH_ROWS)[evaluated:]  # rows the card was not measured on
    assert fresh.shape[0] == FRESH_ROWS
    dictionaries = load_dictionaries(dictionary_set_path(name), model=default_model)
    report = spliced_loss(default_model, dictionaries, fresh, verbose=False, ablations=("zero",))
    by_layer = sorted(dictionaries, key=lambda d: hook_layer(d.out_hook))
    for d, row in zip(by_layer, card["layers"], strict=True):
        got = report.row(d.out_hook)
        assert got.l0 == pytest.approx(row["l0"], abs=0.5)
        assert got.fvu == pytest.approx(row["fvu"], rel=0.25), (row["layer"], got.fvu, row["fvu"])
        assert got.recovered_zero == pytest.approx(row["frac_recovered"], abs=0.08), row["layer"]
    assert report.all.recovered_zero == pytest.approx(
        card["all_layers"]["frac_recovered"], abs=0.05
    )
