"""Pruning patterns on hand-made 4x8 layers, compared exactly."""

from __future__ import annotations

import pytest
import torch

from pipeline.compress import Pattern, group_ids, prune_step

# |w| grows with the position so the expected cuts can be read off by hand
W = torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)
ALL = torch.ones(4, 8, dtype=torch.bool)


def test_parse_and_str() -> None:
    assert Pattern.parse("block(16, 1)") == Pattern("block", 16, 1)
    assert str(Pattern.parse("2:4")) == "2:4"
    with pytest.raises(ValueError, match="must be unstructured, channel, n:m or block"):
        Pattern.parse("diagonal")
    with pytest.raises(ValueError, match="n:m needs 0 < n <= m, got '5:4'"):
        Pattern.parse("5:4")
    with pytest.raises(ValueError, match=r"block\(h,w\) needs h, w >= 1"):
        Pattern.parse("block(0,4)")


def test_group_ids() -> None:
    assert torch.equal(group_ids((2, 4), Pattern("block", 2, 2)),
                       torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]))
    assert torch.equal(group_ids((2, 4), Pattern("channel")), torch.tensor([[0] * 4, [1] * 4]))
    assert torch.equal(group_ids((2, 4), Pattern("nm", 1, 2)),
                       torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]))


def test_unstructured_removes_the_smallest_own_weights() -> None:
    new = prune_step(W, ALL, ALL, Pattern("unstructured"), 0.25)
    expected = ALL.clone()
    expected[0, :] = False  # the 8 smallest of 32
    assert torch.equal(new, expected)


def test_only_own_weights_are_candidates() -> None:
    own = ALL.clone()
    own[0, :] = False  # row 0 is shared: never pruned individually
    new = prune_step(W, ALL, own, Pattern("unstructured"), 0.25)  # 6 of 24 own
    expected = ALL.clone()
    expected[1, :6] = False
    assert torch.equal(new, expected)


def test_block_4x1_removes_whole_columns_of_blocks() -> None:
    new = prune_step(W, ALL, ALL, Pattern("block", 4, 1), 0.25)
    expected = ALL.clone()
    expected[:, :2] = False  # the two 4x1 blocks with the smallest norm
    assert torch.equal(new, expected)


def test_block_removes_shared_positions_inside_pruned_blocks() -> None:
    own = ALL.clone()
    own[0, 0] = False  # a shared weight inside the weakest block
    new = prune_step(W, ALL, own, Pattern("block", 2, 2), 0.1)
    expected = ALL.clone()
    expected[:2, :2] = False  # the block goes whole, its shared position with it
    assert torch.equal(new, expected)


def test_channel_removes_rows() -> None:
    new = prune_step(W, ALL, ALL, Pattern("channel"), 0.5)
    expected = ALL.clone()
    expected[:2] = False
    assert torch.equal(new, expected)


def test_n_m_keeps_the_largest_n_own_per_group() -> None:
    w = torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3]] * 4)
    new = prune_step(w, ALL, ALL, Pattern("nm", 2, 4), 0.0)
    expected = torch.tensor([[True, False, True, False, True, False, False, True]] * 4)
    assert torch.equal(new, expected)
