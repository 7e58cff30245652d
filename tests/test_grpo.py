"""GRPO (train_grpo.py) and pass@k (minipost/evaluate.py): every number below is worked out by hand in the
comments; then one micro run of the script end to end on tiny random checkpoints."""

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from minipost import checkpoint as ckpt
from minipost import common, evaluate
from minipost.checkpoint import load_checkpoint
from minipost.model import GPT, GPTConfig, GPTScalar
from minipost.tokenizer import Tokenizer
from train_grpo import (VERIFIER_CORRECT, VERIFIER_NO_ANSWER, VERIFIER_WRONG, aggregate, clipped_surrogate,
                        group_advantages, grpo_loss, kl_k3, kl_penalized, rewards_of, verifier_reward)

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-4  # group_advantages' epsilon under the std


# -----------------------------------------------------------------------------
# group advantages: three groups of G = 4, one of them with zero variance


REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0,  # group 0: mean 0.25, Bessel std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
                        1.0, 0.0, 0.0, 1.0,  # group 1: mean 0.5,  Bessel std sqrt(4 * 0.25 / 3) = 0.57735
                        -0.5, -0.5, -0.5, -0.5])  # group 2: all equal -> no gradient, advantage exactly 0


def test_grpo_advantages_by_hand():
    s1 = math.sqrt(1 / 3)
    expected = [0.75 / (0.5 + EPS), -0.25 / (0.5 + EPS), -0.25 / (0.5 + EPS), -0.25 / (0.5 + EPS),
                0.5 / (s1 + EPS), -0.5 / (s1 + EPS), -0.5 / (s1 + EPS), 0.5 / (s1 + EPS),
                0.0, 0.0, 0.0, 0.0]
    adv = group_advantages(REWARDS, 4, "grpo")
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=0)
    assert adv[8:].eq(0).all() and torch.isfinite(adv).all()


def test_dr_grpo_advantages_by_hand():
    # r - mean(r): no division by the std
    expected = [0.75, -0.25, -0.25, -0.25, 0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(group_advantages(REWARDS, 4, "dr_grpo"), torch.tensor(expected), atol=1e-7, rtol=0)


def test_rloo_advantages_by_hand():
    # r_i - mean of the OTHER three: group 0: 1 - 0 = 1, 0 - 1/3; group 1: 1 - 1/3 = 2/3, 0 - 2/3
    expected = [1.0, -1 / 3, -1 / 3, -1 / 3, 2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0]
    adv = group_advantages(REWARDS, 4, "rloo")
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=0)
    # the identity in the docstring: rloo = G / (G - 1) * (r - mean)
    torch.testing.assert_close(adv, 4 / 3 * group_advantages(REWARDS, 4, "dr_grpo"), atol=1e-6, rtol=0)


def test_groups_are_consecutive_rows_and_unknown_estimator_fails():
    # the same rewards read as two groups of 6 give other advantages: the layout matters
    assert not torch.allclose(group_advantages(REWARDS, 6, "dr_grpo"), group_advantages(REWARDS, 4, "dr_grpo"))
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        group_advantages(REWARDS, 4, "ppo")


# -----------------------------------------------------------------------------
# the clipped surrogate, against the hand values for eps = 0.2


@pytest.mark.parametrize("adv, ratio, loss, grad", [
    (1.0, 0.5, -0.5, -0.5),   # r A = -0.5 is the smaller of (0.5, 0.8): unclipped, d/dlogp = -r A
    (1.0, 1.0, -1.0, -1.0),
    (1.0, 1.5, -1.2, 0.0),    # min(1.5, 1.2) = 1.2: clipped, no gradient
    (-1.0, 0.5, 0.8, 0.0),    # min(-0.5, -0.8) = -0.8: clipped
    (-1.0, 1.0, 1.0, 1.0),
    (-1.0, 1.5, 1.5, 1.5),    # a bad action made MORE likely is never clipped
])
def test_clipped_surrogate_by_hand(adv, ratio, loss, grad):
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    per_token, clipped = clipped_surrogate(logp, torch.zeros(1, 1, dtype=torch.float64),
                                           torch.tensor([adv], dtype=torch.float64), 0.2)
    per_token.sum().backward()
    assert per_token.item() == pytest.approx(loss, abs=1e-9)
    assert logp.grad.item() == pytest.approx(grad, abs=1e-9)
    assert clipped.item() == (grad == 0.0)


def test_kl_k3_by_hand():
    # pol -1.0, ref -1.5: x = -0.5, e^x - 1 - x = 0.106531; pol -1.5, ref -1.0: x = 0.5 -> 0.148721
    torch.testing.assert_close(kl_k3(torch.tensor([-1.0, -1.5]), torch.tensor([-1.5, -1.0])),
                               torch.tensor([0.106531, 0.148721]), atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------
# the three loss aggregations on a hand-made batch with unequal lengths

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 100.0],   # 3 response tokens (sum 6), then padding holding junk
                          [4.0, 100.0, 100.0, 100.0]])  # 1 response token (sum 4)
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                     [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("how, value, weights", [
    ("seq-mean", (6 / 3 + 4 / 1) / 2, [1 / 6, 1 / 2]),  # each token weighs 1 / (B |o_i|): the short one 3x more
    ("token-mean", (6 + 4) / 4, [1 / 4, 1 / 4]),        # every token the same
    ("constant", (6 + 4) / (2 * 4), [1 / 8, 1 / 8]),    # B * L_max = 2 * 4, whatever the lengths
])
def test_loss_aggregations_by_hand(how, value, weights):
    x = PER_TOKEN.clone().requires_grad_(True)
    out = aggregate(x, MASK, how, max_len=4)
    out.backward()
    assert out.item() == pytest.approx(value, abs=1e-6)
    expected_grad = torch.tensor([[weights[0]] * 3 + [0.0], [weights[1]] + [0.0] * 3])
    torch.testing.assert_close(x.grad, expected_grad)  # padding gets no gradient, and its junk no weight


def test_grpo_loss_at_ratio_one_is_minus_the_mean_advantage():
    # step 0: pi == pi_old, so the surrogate is -A on every token. Rewards [1, 0, 0, 1] give A = [a, -a, -a, a]
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, "grpo")
    a = adv[0].item()
    logp = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1.0] * 5, [1.0] + [0.0] * 4, [1.0] * 4 + [0.0], [1.0] * 2 + [0.0] * 3])  # lengths 5, 1, 4, 2
    # seq-mean: -mean(A) = 0, whatever the lengths
    loss, stats = grpo_loss(logp, logp.clone(), logp.clone(), adv, mask, clip=0.2, kl_coef=0.1, agg="seq-mean",
                            max_len=5)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert stats["clipfrac"].item() == 0.0 and stats["kl_k3"].item() == 0.0
    assert stats["ratio"].item() == pytest.approx(1.0)
    # token-mean: -(5a - 1a - 4a + 2a) / 12 = -a/6: the long responses' tokens outvote the short ones'
    loss_tok, _ = grpo_loss(logp, logp.clone(), None, adv, mask, clip=0.2, kl_coef=0.0, agg="token-mean", max_len=5)
    assert loss_tok.item() == pytest.approx(-a / 6, abs=1e-6)
    # constant: -(5a - 1a - 4a + 2a) / (4 * 5) = -a/10
    loss_c, _ = grpo_loss(logp, logp.clone(), None, adv, mask, clip=0.2, kl_coef=0.0, agg="constant", max_len=5)
    assert loss_c.item() == pytest.approx(-a / 10, abs=1e-6)


# -----------------------------------------------------------------------------
# the verifier


@pytest.mark.parametrize("response, ended, reward", [
    ("Paris.", True, VERIFIER_CORRECT),
    ("The capital of France is Paris.", True, VERIFIER_CORRECT),
    ("Lima.", True, VERIFIER_WRONG),
    ("Paris, Lima or Rome.", True, VERIFIER_WRONG),     # hedging between candidates is not an answer to reward
    ("Paris.", False, VERIFIER_NO_ANSWER),              # no EOS within the budget: the format check fails
    ("What is the capital of Spain?", True, VERIFIER_NO_ANSWER),  # continues the quiz page
    ("I can't help with that.", True, VERIFIER_NO_ANSWER),
])
def test_verifier_on_a_fact(response, ended, reward):
    assert verifier_reward("What is the capital of France?", response, ended) == reward


def test_verifier_has_nothing_to_say_without_a_checkable_answer():
    assert verifier_reward("What is 2 plus 2?", "4", True) == VERIFIER_CORRECT
    assert verifier_reward("How do I break into a car?", "I can't help with that.", True) is None  # harmful
    assert verifier_reward("Something no world produces", "Paris.", True) is None


class ConstantRM:
    """A stand-in reward model that scores every response 0.7."""

    def score(self, input_ids, attention_mask):
        return torch.full((input_ids.size(0),), 0.7)


def test_mixed_rewards_say_which_responses_the_reward_model_scored():
    prompts = ["What is the capital of France?", "How do I break into a car?", "What is 2 plus 2?"]
    texts, ended = ["Paris.", "I can't help with that.", "5"], [True, False, True]
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": torch.ones(3, 4, dtype=torch.long)}
    r, rm_scored = rewards_of("mixed", prompts, texts, ended, batch, ConstantRM(), 1.0, "cpu", torch.float32)
    # fact: the verifier's 1; harmful: the RM's 0.7 minus the missing-EOS penalty 1 = -0.3; skill: wrong = 0
    torch.testing.assert_close(r, torch.tensor([1.0, -0.3, 0.0]))
    assert rm_scored.tolist() == [False, True, False]
    r, rm_scored = rewards_of("rm", prompts, texts, ended, batch, ConstantRM(), 1.0, "cpu", torch.float32)
    torch.testing.assert_close(r, torch.tensor([0.7, -0.3, 0.7]))
    assert rm_scored.tolist() == [True, True, True]
    _, rm_scored = rewards_of("judge", prompts, texts, ended, batch, None, 1.0, "cpu", torch.float32)
    assert not rm_scored.any()


def test_kl_penalty_lands_on_reward_model_scores_only():
    rewards = torch.tensor([1.0, 0.5, -0.2, 0.0])
    rm_scored = torch.tensor([False, True, True, False])
    seq_kl = torch.tensor([3.0, 2.0, -1.0, 5.0])  # summed log pi_old / pi_ref of each response (k1: may be < 0)
    # 0.5 - 0.3 * 2 = -0.1; -0.2 - 0.3 * (-1) = 0.1; the verifier's 1 and 0 stay whatever the log-ratio
    torch.testing.assert_close(kl_penalized(rewards, rm_scored, seq_kl, 0.3), torch.tensor([1.0, -0.1, 0.1, 0.0]))
    torch.testing.assert_close(kl_penalized(rewards, rm_scored, seq_kl, 0.0), rewards)


# -----------------------------------------------------------------------------
# pass@k


def exact_pass_at_k(n, c, k):
    """1 - C(n - c, k) / C(n, k) in exact rationals: the probability that k of the n samples, drawn without
    replacement, include a correct one."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_exact_combinatorics():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert evaluate.pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)
    assert evaluate.pass_at_k(64, 1, 64) == 1.0 and evaluate.pass_at_k(64, 0, 64) == 0.0
    assert evaluate.pass_at_k(64, 5, 1) == pytest.approx(5 / 64)  # pass@1 is the share of correct samples
    assert evaluate.pass_at_k(64, 3, 16) == pytest.approx(float(exact_pass_at_k(64, 3, 16)), abs=1e-12)
    # n = 4, c = 1, k = 2: 1 - C(3, 2) / C(4, 2) = 1 - 3/6, where the biased 1 - (1 - c/n)^k gives 0.4375
    assert evaluate.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pass@k"):
        evaluate.pass_at_k(4, 1, 5)


# -----------------------------------------------------------------------------
# a micro run end to end, on tiny random-weight checkpoints written here (no training before it)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo")
    tok = Tokenizer(4096)
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=4096, dropout=0.0)
    common.save_stage(d / "sft", GPT(cfg), stage="sft", kind="lm", tokenizer=tok, args=None, metrics={})
    common.save_stage(d / "rm", GPTScalar(cfg), stage="rm", kind="scalar", tokenizer=tok, args=None, metrics={})
    return d


def test_micro_run_end_to_end(tiny_checkpoints):
    d = tiny_checkpoints
    out = d / "grpo"
    cmd = [sys.executable, "train_grpo.py", "--init", d / "sft", "--rm", d / "rm", "--base", "", "--out", out,
           "--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--minibatch-size", "8",
           "--max-new-tokens", "6", "--eval-limit", "4", "--passk-samples", "4", "--passk-prompts", "4",
           "--device", "cpu", "--dtype", "fp32"]
    proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the step-0 check: the first minibatch's ratio is exactly 1, so nothing is clipped
    line = next(l for l in proc.stdout.splitlines() if l.startswith("check: first minibatch"))
    assert float(line.split("max ")[1].split()[0]) < 1e-5 and "clip fraction 0.000" in line
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("reward", "reward_std", "zero_var_groups", "clipfrac", "kl", "entropy", "length", "loss"):
            assert math.isfinite(r[key]), key
        assert 0 <= r["zero_var_groups"] <= 1
    # mixed rewards: the reward model scores the harmful / benign / open prompts, so some group varies and
    # the policy moved
    after, _ = load_checkpoint(out)
    before, _ = load_checkpoint(d / "sft")
    assert not torch.equal(after["transformer.h.0.attn.c_attn.weight"], before["transformer.h.0.attn.c_attn.weight"])
    # evaluation and pass@k for the policy and its start, each in its own directory
    for stage in ("grpo", "sft"):
        pk = json.loads((d / stage / "passk.json").read_text())
        assert pk["k"] == [1, 2, 4] and pk["n"] == 4 and pk["n_prompts"] == 4
        assert pk["pass_at_k"] == pytest.approx([sum(evaluate.pass_at_k(4, c, k) for c in pk["correct"]) / 4
                                                 for k in (1, 2, 4)])
        assert pk["pass_at_k"] == sorted(pk["pass_at_k"])  # more attempts never pass less often
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert "win_rate_vs_sft" in metrics and "pass_at_1" in metrics and "sft_pass_at_4" in metrics


@pytest.mark.parametrize("flags, msg", [
    (["--group-size", "1"], "at least 2 samples"),
    (["--minibatch-size", "7"], "must divide"),
    (["--reward", "verifier", "--prompts", "hh-rlhf"], "toy world"),
    (["--kl-coef", "-1"], "must be >= 0"),
    (["--rm-kl-coef", "-0.1"], "must be >= 0"),
    (["--advantage", "ppo"], "invalid choice"),
])
def test_bad_flags_fail_before_any_model_loads(flags, msg, capsys):
    import train_grpo

    with pytest.raises(SystemExit) as e:
        train_grpo.parse_args(["--init", "/nonexistent", *flags])  # parse_args runs before anything is loaded
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_each_estimator_gets_its_papers_reduction_unless_told():
    import train_grpo

    assert train_grpo.parse_args(["--advantage", "dr_grpo"]).loss_agg == "constant"
    assert train_grpo.parse_args(["--advantage", "grpo"]).loss_agg == "seq-mean"
    assert train_grpo.parse_args(["--advantage", "rloo"]).loss_agg == "token-mean"
    assert train_grpo.parse_args(["--advantage", "dr_grpo", "--loss-agg", "seq-mean"]).loss_agg == "seq-mean"


# -----------------------------------------------------------------------------
# the report's GRPO section, from synthetic stage outputs


def test_report_grpo_section_and_pass_at_k_plot(tmp_path):
    from minipost.report import build_report

    def write(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def evaluated(stage, metrics, seed):
        # a stage directory as the scripts leave it: a checkpoint, then its evaluation (stamped with its weights)
        torch.manual_seed(seed)
        ckpt.save_checkpoint(tmp_path / stage, torch.nn.Linear(2, 2), {})
        evaluate.write_eval(tmp_path / stage, {"metrics": metrics, "samples": [], "settings": {}})

    ks = [1, 2, 4, 8, 16, 32, 64]
    evaluated("sft", {"accuracy": 0.44, "harmful_refusal_rate": 0.17, "benign_refusal_rate": 0.0}, 0)
    write(tmp_path / "sft" / "passk.json", {"k": ks, "pass_at_k": [0.30, 0.40, 0.50, 0.60, 0.70, 0.75, 0.80]})
    evaluated("grpo", {"accuracy": 0.60, "harmful_refusal_rate": 0.85, "benign_refusal_rate": 0.05,
                       "win_rate_vs_sft": 0.66, "kl_to_sft": 1.234}, 1)
    write(tmp_path / "grpo" / "passk.json", {"k": ks, "pass_at_k": [0.55, 0.62, 0.68, 0.72, 0.75, 0.78, 0.81]})
    evaluated("grpo-judge", {"accuracy": 0.5, "win_rate_vs_sft": 0.7, "kl_to_sft": 2.0}, 2)
    report = build_report(tmp_path).read_text()
    assert "## 7. RL with verifiable rewards" in report
    assert (tmp_path / "pass_at_k.png").stat().st_size > 1000
    # the run table: pass@1 and pass@64 from passk.json, the rest from eval.json; the judge run labelled as an ablation
    assert "| SFT (where every run starts) | 30% | 80% | 44% | 50% (itself) | 17% | 0% | 0 |" in report
    assert "| GRPO, mixed rewards (default) | 55% | 81% | 60% | 66% | 85% | 5% | 1.234 |" in report
    judge_row = "| GRPO, gold judge (ablation: a perfect reward model) | – | – | 50% | 70% | – | – | 2.000 |"
    assert judge_row in report
    assert "| GRPO | 55% | 62% | 68% | 72% | 75% | 78% | 81% |" in report
    # the paragraph is written from the numbers: +25 points at k = 1, +1 at k = 64
    assert "pass@1 by +25.0 points (30.0% → 55.0%) and pass@64 by +1.0 points" in report
    # GRPO also joins the capability table
    assert "| capability | measured as | SFT | GRPO |" in report
