"""Online DPO (train_dpo.py --online) on micro settings: the pairs are samples of the CURRENT policy, the
labeler decides chosen / rejected (ties skipped), and at step 0 the loss is ln 2."""

import math

import torch

from minipost import evaluate
from minipost.model import GPT, GPTConfig
from minipost.tokenizer import Tokenizer
from train_dpo import parse_args, sample_pairs, train_online

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=512, dropout=0.0)
INSTRUCTIONS = [f"Count to {i}." for i in range(6)]


def setup(seed=0):
    torch.manual_seed(seed)
    tok = Tokenizer(TINY["vocab_size"])
    policy, ref = GPT(GPTConfig(**TINY)), GPT(GPTConfig(**TINY))
    ref.load_state_dict(policy.state_dict())
    ref.eval().requires_grad_(False)
    prompt_ids = [tok.encode(x)[:12] for x in INSTRUCTIONS]
    return tok, policy, ref, prompt_ids


def by_first_token(instructions, prompt_ids, texts, toks, ended):
    """A labeler: the answer whose first token has the larger id wins (equal first tokens tie)."""
    return torch.tensor([float(t[0]) if t else -1.0 for t in toks])


def online_args(tmp_path, steps, lr=0.1):
    return parse_args(["--online", "--labeler", "judge", "--steps", str(steps), "--batch-size", "4", "--lr", str(lr),
                       "--warmup", "0", "--out", str(tmp_path / "dpo"), "--seed", "3", "--beta", "1.0"])


def test_labels_follow_the_labeler_and_ties_are_skipped():
    tok, policy, _, prompt_ids = setup()
    pairs, stats = sample_pairs(policy, tok, INSTRUCTIONS, prompt_ids, by_first_token,
                                generator=torch.Generator().manual_seed(0), device="cpu", dtype=torch.float32)
    assert stats["pairs"] == len(pairs) and stats["pairs"] + stats["ties"] == len(INSTRUCTIONS)
    assert pairs, "random answers should not all tie"
    for p in pairs:
        assert p.chosen[p.n_prompt] > p.rejected[p.n_prompt]  # the labeler's preference
        assert p.chosen[: p.n_prompt] == p.rejected[: p.n_prompt]  # same prompt
    # the opposite labeler on the same samples swaps every pair
    flipped, _ = sample_pairs(policy, tok, INSTRUCTIONS, prompt_ids, lambda *a: -by_first_token(*a),
                              generator=torch.Generator().manual_seed(0), device="cpu", dtype=torch.float32)
    assert [(p.rejected, p.chosen) for p in flipped] == [(p.chosen, p.rejected) for p in pairs]


def test_pairs_are_the_policys_own_samples():
    tok, policy, _, prompt_ids = setup()
    gen = torch.Generator().manual_seed(1)
    pairs, _ = sample_pairs(policy, tok, INSTRUCTIONS, prompt_ids, by_first_token, generator=gen, device="cpu",
                            dtype=torch.float32)
    # the same draws, made directly: every pair is two of them (prompt i's samples are rows i and n + i)
    _, toks, ended = evaluate.generate_from_ids(policy, tok, prompt_ids + prompt_ids, device="cpu", temperature=1.0,
                                                generator=torch.Generator().manual_seed(1))
    seqs = {tuple(p + t + ([tok.eos_id] if e else [])) for p, t, e in zip(prompt_ids + prompt_ids, toks, ended)}
    assert all(tuple(p.chosen) in seqs and tuple(p.rejected) in seqs for p in pairs)


def test_each_round_samples_the_current_policy(tmp_path):
    """Round 1 of a 2-step run is what the policy after step 1 samples, not what the SFT model would."""
    seen = []

    def recording(instructions, prompt_ids, texts, toks, ended):
        seen.append([tuple(t) for t in toks])
        return by_first_token(instructions, prompt_ids, texts, toks, ended)

    tok, policy, ref, prompt_ids = setup()
    train_online(policy, ref, INSTRUCTIONS, prompt_ids, recording, tok, online_args(tmp_path, 2), beta=1.0, steps=2,
                 device="cpu", dtype=torch.float32)
    assert len(seen) == 2

    def replay(model, steps_before):  # what `model` samples in round `steps_before`, with the run's generators
        args = online_args(tmp_path, 2)
        data_rng, sample_rng = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 1)
        for _ in range(steps_before + 1):
            picks = torch.randint(0, len(prompt_ids), (args.batch_size,), generator=data_rng).tolist()
            ids = [prompt_ids[i] for i in picks]
            _, toks, _ = evaluate.generate_from_ids(model, tok, ids + ids, device="cpu", temperature=1.0,
                                                    generator=sample_rng)
        return [tuple(t) for t in toks]

    _, sft, _, _ = setup()  # the untouched initial policy
    assert replay(sft, 0) == seen[0]  # round 0: the initial policy's samples
    assert replay(sft, 1) != seen[1]  # round 1 is NOT what the initial policy would have said ...
    _, after_one, ref1, _ = setup()
    train_online(after_one, ref1, INSTRUCTIONS, prompt_ids, by_first_token, tok, online_args(tmp_path, 1), beta=1.0,
                 steps=1, device="cpu", dtype=torch.float32)
    # ... it is what the policy after one step says (warmup 0: step 0 runs at the peak lr in both runs)
    assert replay(after_one, 1) == seen[1]


def test_step0_loss_is_ln2(tmp_path):
    tok, policy, ref, prompt_ids = setup()
    metrics, _ = train_online(policy, ref, INSTRUCTIONS, prompt_ids, by_first_token, tok, online_args(tmp_path, 1),
                              beta=1.0, steps=1, device="cpu", dtype=torch.float32)
    assert metrics["pairs"] > 0
    assert abs(metrics["loss"] - math.log(2)) < 1e-6
    assert metrics["rewards/margin"] == 0.0
    # and the step moved the policy away from the reference
    assert not torch.equal(policy.transformer.h[0].attn.c_attn.weight, ref.transformer.h[0].attn.c_attn.weight)
