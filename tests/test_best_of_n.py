"""Best-of-n against the reward model (evaluate.best_of_n_curve): the analytic KL, the unbiased estimator of the
pick's scores checked against every subset, and the curve on a tiny model."""

import itertools
import math
import random

import pytest
import torch

from minipost import evaluate
from minipost.model import GPT, GPTConfig, GPTScalar
from minipost.tokenizer import Tokenizer
from minipost.world import build_world


def test_kl_formula():
    assert evaluate.best_of_n_kl(1) == 0.0
    assert evaluate.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert evaluate.best_of_n_kl(64) == pytest.approx(4.1589 - 0.9844, abs=1e-4)  # 3.1745 nats
    with pytest.raises(ValueError):
        evaluate.best_of_n_kl(0)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_weights_equal_the_average_over_every_subset(n):
    """E[gold of the sample with the highest RM score among n drawn without replacement], by brute force."""
    rng = random.Random(n)
    proxy = [rng.gauss(0, 1) for _ in range(6)]
    gold = [rng.choice([-1.0, -0.5, 0.3, 1.0]) for _ in range(6)]
    subsets = list(itertools.combinations(range(6), n))
    picks = [max(s, key=lambda j: proxy[j]) for s in subsets]  # the chosen sample: highest RM score of the n
    brute_gold = sum(gold[j] for j in picks) / len(subsets)
    brute_rm = sum(proxy[j] for j in picks) / len(subsets)
    w = evaluate.best_of_n_weights(proxy, n)
    assert sum(w) == pytest.approx(1.0)
    assert sum(a * b for a, b in zip(w, gold)) == pytest.approx(brute_gold)
    assert sum(a * b for a, b in zip(w, proxy)) == pytest.approx(brute_rm)
    if n == 6:  # all of them: the argmax, with certainty
        assert w[max(range(6), key=lambda j: proxy[j])] == 1.0


def test_curve_on_a_tiny_model():
    torch.manual_seed(0)
    cfg = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=512, dropout=0.0)
    tok = Tokenizer(cfg["vocab_size"])
    model, rm = GPT(GPTConfig(**cfg)).eval(), GPTScalar(GPTConfig(**cfg)).eval()
    world = build_world(seed=0, n_docs=1)
    res = evaluate.best_of_n_curve(model, rm, tok, world, (1, 2, 4), device="cpu", limit=3, seed=0)
    N, P = res["N"], res["n_prompts"]
    assert (N, P) == (4, 3) and len(res["proxy"]) == len(res["gold"]) == N * P
    assert res["kl"] == [evaluate.best_of_n_kl(n) for n in (1, 2, 4)]
    # the proxy of the pick can only rise with n (E[max of n] is non-decreasing)
    assert res["rm_score"][0] <= res["rm_score"][1] + 1e-9 <= res["rm_score"][2] + 2e-9
    # n = 1: the plain mean; n = N: the sample with the highest RM score of each prompt
    assert res["rm_score"][0] == pytest.approx(sum(res["proxy"]) / (N * P))
    assert res["gold_score"][0] == pytest.approx(sum(res["gold"]) / (N * P))
    best = [max(range(i * N, (i + 1) * N), key=lambda j: res["proxy"][j]) for i in range(P)]
    assert res["rm_score"][-1] == pytest.approx(sum(res["proxy"][j] for j in best) / P)
    assert res["gold_score"][-1] == pytest.approx(sum(res["gold"][j] for j in best) / P)
