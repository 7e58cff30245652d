"""By-hand checks of pieces that other tests cover only through their consequences: causality of the
hand-written attention, the 4-D attention mask, token log-probs, the SFT loss's value, the value-loss clip.
They grade the exercises of minipost/exercises.py along with the other tests."""

import math

import torch
import torch.nn.functional as F

from minipost import data
from minipost.model import GPT, GPTConfig, attention_mask_4d, token_logprobs


def test_attention_is_causal():
    """Changing a later token leaves every earlier position's logits unchanged (hand-written path, no mask)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, fused_attn=False)).eval()
    a = torch.tensor([[3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 4] = 9
    la, lb = m(a), m(b)
    torch.testing.assert_close(la[:, :4], lb[:, :4], atol=1e-6, rtol=0)
    assert (la[:, 4:] - lb[:, 4:]).abs().max() > 1e-4  # later positions do see the change


def test_attention_mask_by_hand():
    mask = attention_mask_4d(torch.tensor([[0, 1, 1]]), 3)  # one left pad, then two real tokens
    assert mask.shape == (1, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False],  # the pad query sees only itself
                                   [False, True, False],  # token 1 sees itself, not the pad
                                   [False, True, True]]  # token 2 sees tokens 1 and 2
    last = attention_mask_4d(torch.tensor([[1, 1, 0, 1]]), 1)  # one new query at position 3 (decoding)
    assert last[0, 0].tolist() == [[True, True, False, True]]


def test_token_logprobs_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # (1, 2, V=2): probs (1/4, 3/4), (1/2, 1/2)
    got = token_logprobs(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(got, torch.tensor([[math.log(0.75), math.log(0.5)]]))
    assert got.dtype == torch.float32
    assert token_logprobs(logits.bfloat16(), torch.tensor([[1, 0]])).dtype == torch.float32


def test_sft_loss_is_the_response_token_mean():
    """The loss equals cross-entropy averaged over response targets only (prompt and padding excluded)."""
    from train_sft import count_targets, sft_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50))
    batch = data.collate([([1, 2, 3, 4, 49], 3), ([5, 6, 49], 1)], 49)  # 2 + 2 response targets, one padded row
    logits = model(batch["input_ids"], batch["attention_mask"])
    # the targets by hand: row 0 predicts tokens 3, 4 (4, 49) from positions 2, 3; row 1 predicts 6, 49 from 0, 1
    by_hand = torch.stack([F.cross_entropy(logits[0, 2:4], torch.tensor([4, 49]), reduction="sum"),
                           F.cross_entropy(logits[1, 0:2], torch.tensor([6, 49]), reduction="sum")]).sum() / 4
    assert count_targets(batch) == 4
    torch.testing.assert_close(sft_loss(logits, batch, 4), by_hand)


def test_value_loss_takes_the_larger_error():
    from train_ppo import value_loss

    m = torch.ones(1, 2)
    old, ret = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
    v = torch.tensor([[0.5, 0.5]])  # moved 0.5 from old; clip 0.2 keeps 0.2
    # token 0: (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64; token 1: (0.5+1)^2 = 2.25, (0.2+1)^2 = 1.44 -> 2.25
    torch.testing.assert_close(value_loss(v, old, ret, m, 0.2), torch.tensor(0.5 * (0.64 + 2.25) / 2))
    torch.testing.assert_close(value_loss(v, old, ret, torch.tensor([[1.0, 0.0]]), 0.2), torch.tensor(0.5 * 0.64))
