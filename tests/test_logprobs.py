"""Sequence log-probs and rewards as DPO, PPO, RM and the evaluation compute them: response tokens only,
unchanged by padding, and the same whether sequences go through one padded batch or length-sorted groups."""

import torch
import torch.nn.functional as F

from minipost import data
from minipost.model import GPT, GPTConfig, GPTScalar
from train_dpo import pair_logps, sequence_logprob
from train_rm import score_pairs

CFG = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=100, dropout=0.0)
EOS = 99


def seqs_of(lengths, n_prompt=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 99, (n,), generator=g).tolist()[:-1] + [EOS], min(n_prompt, n - 1)) for n in lengths]


def test_length_groups_cover_every_index_once_shortest_first():
    lengths = [5, 40, 3, 17, 3, 60, 8]
    groups = data.length_groups(lengths, 3)
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert all(len(g) <= 3 for g in groups)
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)


def test_sequence_logprob_is_minus_cross_entropy_over_the_response_and_ignores_padding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).eval()
    ids, n_prompt = seqs_of([9])[0]
    x = torch.tensor([ids])
    by_hand = -F.cross_entropy(model(x)[0, n_prompt - 1 : -1], x[0, n_prompt:], reduction="sum")
    for extra in (0, 1, 7):  # right-padding columns
        batch = data.collate([(ids, n_prompt), (ids + [5] * extra, n_prompt)], EOS)
        batch["attention_mask"][1, len(ids):] = 0
        batch["response_mask"][1, len(ids):] = 0
        got = sequence_logprob(model, batch)
        assert torch.allclose(got, by_hand.expand(2), atol=1e-5), (extra, got, by_hand)


def test_per_sequence_equals_one_batch_values_and_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG))
    seqs = seqs_of([12, 4, 30, 7, 4, 21, 9])
    one = sequence_logprob(model, data.collate(seqs, EOS))
    (g_one,) = torch.autograd.grad(one.sum() * 1.0 + (one * torch.arange(7.0)).sum(), model.lm_head.weight)
    grouped = data.per_sequence(lambda b: sequence_logprob(model, b), seqs, EOS, "cpu", rows=3)
    (g_grouped,) = torch.autograd.grad(grouped.sum() * 1.0 + (grouped * torch.arange(7.0)).sum(), model.lm_head.weight)
    assert torch.allclose(one, grouped, atol=1e-5)  # same order as seqs
    assert torch.allclose(g_one, g_grouped, atol=1e-5)


def test_pair_logps_and_score_pairs_match_sequences_scored_alone():
    torch.manual_seed(0)
    lm, rm = GPT(GPTConfig(**CFG)).eval(), GPTScalar(GPTConfig(**CFG)).eval()
    chosen, rejected = seqs_of([6, 25, 11], seed=1), seqs_of([18, 5, 11], seed=2)
    pairs = [data.EncodedPair(c, r, n, 0.0) for (c, n), (r, _) in zip(chosen, rejected)]
    with torch.no_grad():
        lp_c, lp_r = pair_logps(lm, pairs, EOS, "cpu", torch.float32)
        r_c, r_r, _ = score_pairs(rm, pairs, EOS, "cpu", torch.float32)
        for i, (c, r, n, _) in enumerate(pairs):
            for ids, lp, rw in ((c, lp_c[i], r_c[i]), (r, lp_r[i], r_r[i])):
                alone = data.collate([(ids, n)], EOS)
                assert torch.allclose(lp, sequence_logprob(lm, alone)[0], atol=1e-5)
                assert torch.allclose(rw, rm.score(alone["input_ids"], alone["attention_mask"])[0], atol=1e-5)
