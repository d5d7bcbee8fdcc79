"""tools/last_block_scale.py's decomposition on cases with a known answer."""

import torch

from tools.last_block_scale import along


def test_an_excess_that_is_a_multiple_of_the_direction_lies_wholly_along_it():
    direction = torch.randn(50, 8)
    share, c = along(2.5 * direction, direction)
    assert abs(share - 1) < 1e-6 and abs(c - 2.5) < 1e-5


def test_the_share_along_the_direction_is_its_part_of_the_square():
    # per row: excess = 3 * e0 + 4 * e1 with direction e0: 9 / 25 of the square, coefficient 3
    direction = torch.zeros(20, 4)
    direction[:, 0] = 1.0
    excess = torch.zeros(20, 4)
    excess[:, 0], excess[:, 1] = 3.0, 4.0
    share, c = along(excess, direction)
    assert abs(share - 9 / 25) < 1e-6 and abs(c - 3) < 1e-6
    # orthogonal: nothing along it
    excess[:, 0] = 0.0
    share, c = along(excess, direction)
    assert abs(share) < 1e-6 and abs(c) < 1e-6
