"""`sparse-circuits info`: a card's figures, an interval among them, on one line per layer."""

from __future__ import annotations

from replacement.info_cli import _figures


def test_a_cards_interval_is_printed_as_an_interval_beside_its_figure():
    layer = {"layer": 2, "ce_increase": 0.04321, "ce_increase_interval": [0.0401234, 0.0467]}
    line = _figures(layer, ("layer", "ce_increase", "ce_increase_interval", "fvu"))
    assert line == "layer=2, ce_increase=0.04321, ce_increase_interval=[0.04012, 0.0467]"
