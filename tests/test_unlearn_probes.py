"""Quantization probes that emulate bitsandbytes (FP4 blocks of 64, LLM.int8 with outlier
threshold 6.0), checked against values computed by hand from bitsandbytes' formulas."""

import copy

import pytest
import torch
from torch import nn

from structops.unlearn import probes
from structops.unlearn.tracks.tiny_lm import TinyLM


def test_fp4_code_book_is_bitsandbytes():
    # bitsandbytes get_4bit_type('fp4'): [0, 0.0625, 8, 12, 4, 6, 2, 3] and negatives, / 12
    mags = sorted(set(abs(v) for v in probes.BNB_FP4_CODE.tolist()))
    assert mags == pytest.approx([0, 0.0625 / 12, 2 / 12, 3 / 12, 4 / 12, 6 / 12, 8 / 12, 1.0])


def test_fp4_blockwise_hand_computed():
    # one block: absmax 12 -> scaled [1, .5, .25, -.125, 1/30, -.9]; nearest codes (x12):
    # 12, 6, 3, -2 (0.125 is nearer 2/12=.1667 than .0052), 0.0625 (1/30 nearer .0052 than 0), -12 (.9 -> 1)
    w = torch.tensor([12.0, 6.0, 3.0, -1.5, 0.4, -10.8], dtype=torch.float64)
    torch.testing.assert_close(probes.fp4_blockwise(w), torch.tensor([12.0, 6.0, 3.0, -2.0, 0.0625, -12.0],
                                                                     dtype=torch.float64))


def test_fp4_blocks_of_64_have_their_own_absmax():
    w = torch.ones(2, 64, dtype=torch.float64)
    w[1, 0] = 100.0  # the second block's absmax
    q = probes.fp4_blockwise(w)
    assert torch.equal(q[0], torch.ones(64, dtype=torch.float64))          # 1/1 -> code 1
    # 1/100 = 0.01 -> nearest code 0.0625/12 = 0.0052 -> 0.52; a single global absmax would agree
    # here, so also check a block split in the middle of a row
    torch.testing.assert_close(q[1, 1:], torch.full((63,), 100 * 0.0625 / 12, dtype=torch.float64))
    w2 = torch.ones(96, dtype=torch.float64)
    w2[70] = 100.0  # second block (64..95) only
    q2 = probes.fp4_blockwise(w2)
    assert torch.equal(q2[:64], torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(q2[64:70], torch.full((6,), 100 * 0.0625 / 12, dtype=torch.float64))


def test_bnb_fp4_leaves_head_and_embeddings_alone():
    torch.manual_seed(0)
    model = TinyLM(12, d=8, layers=1, heads=2, max_len=6)
    q = probes.quantize_bnb_fp4(model)
    assert torch.equal(q.head.weight, model.head.weight)
    assert torch.equal(q.tok.weight, model.tok.weight)
    changed = [n for n, m in q.named_modules() if isinstance(m, nn.Linear)
               and not torch.equal(m.weight, dict(model.named_modules())[n].weight)]
    assert changed and "head" not in changed
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    qm = probes.quantize_bnb_fp4(mlp)
    assert not torch.equal(qm[0].weight, mlp[0].weight) and torch.equal(qm[2].weight, mlp[2].weight)


def test_llm_int8_hand_computed():
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[127.0, 1.4, -63.6]]))
    model = nn.Sequential(lin, nn.Linear(1, 1))  # the second Linear is the head: unquantised
    q = probes.quantize_llm_int8(model)
    # weight row absmax 127 -> scale 1: [127, 1, -64]
    torch.testing.assert_close(q[0].weight, torch.tensor([[127.0, 1.0, -64.0]]))
    x = torch.tensor([[0.5, 7.0, 1.0]])  # feature 1 is an outlier (> 6): kept exactly
    # features 0, 2 per token: absmax 1.0 -> scale 1/127: 0.5 -> round(63.5) = 64 -> 64/127; 1.0 -> 1.0
    expect = 127.0 * (64 / 127) + 1.0 * 7.0 + (-64.0) * 1.0
    torch.testing.assert_close(q[0](x), torch.tensor([[expect]]))
    # without the outlier decomposition the 7.0 would be the scale and 0.5 would round to 9/127*7
    assert abs(expect - (127.0 * round(0.5 / 7 * 127) * 7 / 127 + 7.0 - 64.0)) > 0.1
    assert isinstance(q[1], nn.Linear) and torch.equal(q[1].weight, model[1].weight)


def test_bnb_probes_erase_a_sub_bin_update_but_not_a_large_one():
    """FP4 (bin ~1/6 of the block absmax) erases a tiny edit; an edit of several bins survives."""
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad():
        mlp[0].weight.copy_(torch.linspace(-1, 1, 64 * 64).reshape(64, 64)[torch.randperm(64)])
        mlp[0].weight[:, 0] = 1.0  # every block's absmax is exactly 1 (blocks are the rows)
    small = copy.deepcopy(mlp)
    with torch.no_grad():
        w = small[0].weight
        codes = probes.fp4_blockwise(w)
        # nudge every entry by 1% of its distance to its nearest code: still rounds the same way
        w.add_(0.01 * (codes - w))
        w[:, 0] = 1.0
    assert not torch.equal(small[0].weight, mlp[0].weight)
    assert torch.equal(probes.quantize_bnb_fp4(small)[0].weight, probes.quantize_bnb_fp4(mlp)[0].weight)
    big = copy.deepcopy(mlp)
    with torch.no_grad():
        big[0].weight[:, 1:].mul_(-1)
    assert not torch.equal(probes.quantize_bnb_fp4(big)[0].weight, probes.quantize_bnb_fp4(mlp)[0].weight)
