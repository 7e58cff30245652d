"""Every stage's loss against golden numbers computed independently (by hand or in float64), with gradients."""

import math

import pytest
import torch

from train_dpo import chosen_nll, dpo_logits, dpo_loss, hinge_loss, ipo_loss, preference_loss
from train_ppo import (AdaptiveKL, gae, kl_per_token, masked_whiten, policy_loss, response_mask_after,
                       token_rewards, value_loss)
from train_rm import bradley_terry_loss

# ----------------------------------------------------------------------------- DPO


def test_dpo_goldens_beta_0_1():
    h = torch.tensor([0.0, 10.0, 20.0], dtype=torch.float64, requires_grad=True)
    losses = dpo_loss(h, beta=0.1)
    torch.testing.assert_close(losses, torch.tensor([0.693147, 0.313262, 0.126928], dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(losses.mean().item() - 0.377779) < 1e-6
    losses.sum().backward()
    # d/dh -log sigma(beta h) = -beta * sigma(-beta h)
    expected = -0.1 * torch.sigmoid(-0.1 * h.detach())
    torch.testing.assert_close(h.grad, expected)
    assert abs(h.grad[0].item() + 0.05) < 1e-12


def test_dpo_logits_and_ln2_when_policy_is_reference():
    lp = torch.tensor([-3.0, -7.5])
    h = dpo_logits(lp[:1], lp[1:], lp[:1], lp[1:])
    assert h.item() == 0.0
    assert abs(dpo_loss(h, 0.1).item() - math.log(2)) < 1e-7
    # (log pi_c - ref_c) - (log pi_r - ref_r) computed by hand
    assert dpo_logits(torch.tensor([-1.0]), torch.tensor([-4.0]), torch.tensor([-2.0]), torch.tensor([-3.0])).item() == 2.0


def test_label_smoothing_ipo_hinge_by_hand():
    h = torch.tensor([2.0], dtype=torch.float64)
    beta, eps = 0.5, 0.1
    # conservative DPO: -(0.9) log sigma(1) - 0.1 log sigma(-1)
    by_hand = -(0.9) * math.log(1 / (1 + math.exp(-1))) - 0.1 * math.log(1 / (1 + math.exp(1)))
    assert abs(dpo_loss(h, beta, eps).item() - by_hand) < 1e-12
    assert abs(by_hand - 0.413262) < 1e-6  # 0.9 * 0.313262 + 0.1 * 1.313262
    # IPO: (h - 1/(2 beta))^2 = (2 - 1)^2
    assert ipo_loss(h, beta).item() == 1.0
    assert ipo_loss(torch.tensor([1.0]), beta).item() == 0.0  # its minimum is a finite margin
    # hinge: max(0, 1 - beta h)
    assert hinge_loss(torch.tensor([1.0, 3.0]), beta).tolist() == [0.5, 0.0]
    assert torch.equal(preference_loss(h, "ipo", beta), ipo_loss(h, beta))
    with pytest.raises(ValueError):
        preference_loss(h, "nope", beta)


def test_rpo_chosen_nll_per_token_by_hand():
    # -log pi(y_c) / |y_c|: summed log-probs -6 over 3 tokens and -2 over 4 tokens
    pol_c = torch.tensor([-6.0, -2.0], requires_grad=True)
    nll = chosen_nll(pol_c, torch.tensor([3.0, 4.0]))
    assert nll.tolist() == [2.0, 0.5]
    nll.mean().backward()
    # raising log pi(y_c) lowers it, less for longer responses
    assert pol_c.grad.tolist() == pytest.approx([-1 / 6, -1 / 8], abs=1e-7)


# ----------------------------------------------------------------------------- reward model


@pytest.mark.parametrize("delta, margin, loss, grad", [(1.5, 0.0, 0.201413, -0.182426), (1.5, 1.0, 0.474077, None),
                                                       (0.0, 0.0, math.log(2), -0.5), (-100.0, 0.0, 100.0, -1.0)])
def test_bradley_terry_goldens(delta, margin, loss, grad):
    rc = torch.tensor([delta], dtype=torch.float32, requires_grad=True)
    rr = torch.tensor([0.0])
    out = bradley_terry_loss(rc, rr, margin)
    assert torch.isfinite(out)
    assert abs(out.item() - loss) < 1e-5
    out.backward()
    if grad is not None:
        assert abs(rc.grad.item() - grad) < 1e-6


# ----------------------------------------------------------------------------- PPO


def test_kl_estimator_goldens():
    pol, ref = torch.tensor([-1.0, -1.5]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(kl_per_token(pol, ref, "k1"), torch.tensor([0.5, -0.5]))  # k1 can be negative
    torch.testing.assert_close(kl_per_token(pol, ref, "k2"), torch.tensor([0.125, 0.125]))
    torch.testing.assert_close(kl_per_token(pol, ref, "k3"), torch.tensor([0.106531, 0.148721]), atol=1e-6, rtol=0)
    x = torch.randn(1000)
    assert (kl_per_token(x, torch.randn(1000), "k3") >= 0).all()
    for k in ("k1", "k2", "k3"):
        assert (kl_per_token(x, x, k) == 0).all()  # policy == reference: exactly zero


def test_kl_estimators_are_unbiased_monte_carlo():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    y = torch.multinomial(p, 200000, replacement=True, generator=torch.Generator().manual_seed(0))
    for k in ("k1", "k3"):
        est = kl_per_token(p.log()[y], q.log()[y], k).mean().item()
        assert abs(est - 0.274887) < 0.01, (k, est)


@pytest.mark.parametrize("A, r, loss, grad", [(1, 0.5, -0.5, -0.5), (1, 1.0, -1.0, -1.0), (1, 1.5, -1.2, 0.0),
                                              (-1, 0.5, 0.8, 0.0), (-1, 1.0, 1.0, 1.0), (-1, 1.5, 1.5, 1.5)])
def test_clipped_surrogate_table(A, r, loss, grad):
    logp = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    out, stats = policy_loss(logp, old, torch.tensor([[float(A)]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), 0.2)
    assert abs(out.item() - loss) < 1e-9
    out.backward()
    assert abs(logp.grad.item() - grad) < 1e-9
    assert stats["clipfrac"].item() == (1.0 if grad == 0.0 else 0.0)


def test_gae_golden():
    values = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), gamma=0.9, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.657922, 0.7695, 0.9, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[0.657922, 0.7695, 0.9, 1.0]]), atol=1e-6, rtol=0)


def test_gae_ignores_padding_after_the_end():
    values = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    padded_values = values.clone()
    padded_values[0, 4:] = 7.0  # garbage where the mask is 0
    mask = torch.tensor([[1.0, 1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, padded_values, mask, 0.9, 0.95)
    torch.testing.assert_close(adv[:, :4], torch.tensor([[0.657922, 0.7695, 0.9, 0.0]]), atol=1e-6, rtol=0)
    assert (adv[:, 4:] == 0).all() and (ret[:, 4:] == 0).all()


def test_reward_lands_on_the_eos_index_and_mask():
    eos = 9
    new = torch.tensor([[4, 5, eos, eos, eos]])  # t0, t1, EOS, then the sampler's EOS padding
    mask = response_mask_after(new, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0]]
    r = token_rewards(torch.tensor([2.0]), torch.zeros(1, 5), mask.float(), beta=0.1)
    assert r.tolist() == [[0.0, 0.0, 2.0, 0.0, 0.0]]
    # KL penalty on every valid token, the score added once on the last one
    kl = torch.tensor([[1.0, 1.0, 1.0, 5.0, 5.0]])
    r = token_rewards(torch.tensor([2.0]), kl, mask.float(), beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.1, -0.1, 1.9, 0.0, 0.0]]))
    # a response without EOS: every token is valid
    assert response_mask_after(torch.tensor([[4, 5, 6]]), eos).tolist() == [[1, 1, 1]]


def test_whitening_a_single_valid_token_is_finite():
    x = torch.tensor([[3.0, 0.0, 0.0]])
    out = masked_whiten(x, torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.isfinite(out).all() and out.abs().max() < 1e-3
    y = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(y[:, :3].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert y[0, 3] == 0


def test_value_loss_clipping():
    v, old, ret, m = torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1)
    # unclipped (2 - 1)^2 = 1; clipped 0.2 -> (0.2 - 1)^2 = 0.64; max = 1 -> 0.5
    assert abs(value_loss(v, old, ret, m, 0.2).item() - 0.5) < 1e-7


def test_adaptive_kl_controller():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 1000)  # KL twice the target: error clipped to +0.2
    assert abs(ctl.beta - 0.1 * (1 + 0.2 * 0.1)) < 1e-12
    fixed = AdaptiveKL(0.1, target=0.0, horizon=10000)
    fixed.update(100.0, 1000)
    assert fixed.beta == 0.1


# ----------------------------------------------------------------------------- SFT


def test_sft_loss_micro_batches_give_the_full_batch_gradient():
    """docs/pitfalls.md, pitfall 5: micro-batches with 1 and 99 target tokens, each divided by the step's
    token count and summed, give the loss and gradient of the whole batch (a mean of means would not)."""
    from minipost import data
    from minipost.model import GPT, GPTConfig
    from train_sft import count_targets, sft_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=50, dropout=0.0))
    seqs = [([1, 2, 3, 49], 3), ([(i % 48) + 1 for i in range(100)], 1)]  # 1 and 99 response tokens
    full = data.collate(seqs, 0)
    n = count_targets(full)
    assert n == 100
    whole = sft_loss(model(full["input_ids"], full["attention_mask"]), full, n)
    (g_whole,) = torch.autograd.grad(whole, model.lm_head.weight)
    parts = [data.collate([s], 0) for s in seqs]
    summed = sum(sft_loss(model(b["input_ids"], b["attention_mask"]), b, n) for b in parts)
    (g_summed,) = torch.autograd.grad(summed, model.lm_head.weight)
    torch.testing.assert_close(summed, whole, rtol=1e-5, atol=0)
    torch.testing.assert_close(g_summed, g_whole, rtol=1e-5, atol=1e-8)
    mean_of_means = sum(sft_loss(model(b["input_ids"], b["attention_mask"]), b, count_targets(b)) for b in parts) / 2
    assert abs(mean_of_means.item() - whole.item()) > 1e-3  # the mistake this guards against is measurable here
