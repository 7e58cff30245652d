"""
Stage 5 — RL with verifiable rewards: GRPO, Dr. GRPO and RLOO. PPO without a value model.
Teaches: a group's own samples, scored by a checkable reward, replace PPO's value model as the baseline.

For each prompt q, sample a GROUP of G responses o_1..o_G from the current policy at temperature 1, score
each with a reward r_i, and use the group itself as the baseline: a response is good if it beats its
siblings. No value model, no GAE, no reward model needed where an answer can be checked by a program.

Advantages, one number per response, given to every one of its tokens (`--advantage`):

    grpo     A_i = (r_i - mean(r)) / std(r)                      Shao et al. 2024 (DeepSeekMath), eq. 3
    dr_grpo  A_i =  r_i - mean(r)                                Liu et al. 2025 ("Dr. GRPO"): the std
             division up-weights groups that are almost all right or all wrong (a question-difficulty bias)
    rloo     A_i =  r_i - 1/(G-1) sum_{j != i} r_j               Ahmadian et al. 2024 (RLOO): leave-one-out,
             the baseline does not depend on r_i, so the estimate is unbiased; = G/(G-1) (r_i - mean(r))

mean and std over the G rewards of one prompt (std with Bessel's correction, G - 1). A group whose
rewards are all equal has A = 0 for every response: it carries no gradient (logged as `zero_var_groups`).

The loss, PPO's clipped surrogate on token log-prob ratios (several minibatch epochs per rollout batch):

    rho_{i,t} = pi(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t})
    l_{i,t}   = - min( rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps, 1 + eps) A_i )  +  beta * k3_{i,t}
    k3_{i,t}  = pi_ref / pi - 1 - log(pi_ref / pi)             (>= 0; the unbiased KL estimator GRPO uses)

and three ways to reduce l_{i,t} over a batch of B responses (`--loss-agg`):

    seq-mean    1/B sum_i 1/|o_i| sum_t l_{i,t}    GRPO. Each response weighs the same whatever its length,
                so a token of a SHORT response weighs more: wrong answers are pushed to get longer
                (their per-token penalty shrinks with length), right ones to get shorter.
    token-mean  sum_{i,t} l_{i,t} / sum_i |o_i|    DAPO (Yu et al. 2025): every token weighs the same.
    constant    sum_{i,t} l_{i,t} / (B * L_max)    Dr. GRPO: a constant normalizer (L_max = --max-new-tokens),
                the plain Monte Carlo policy gradient, no length bias.

The default pairs each estimator with its paper's reduction (grpo: seq-mean, dr_grpo: constant, rloo:
token-mean); `--loss-agg` overrides it, so the length-bias discussion can be run, not just read.

Rewards (`--reward`):
    verifier  fact and skill prompts only (the ones a program can check): 1 for the right answer in the
              assistant format, 0 for a wrong answer in the format, -0.5 for no answer (a refusal, a question,
              an answer that runs on, or no EOS within the budget). RL with verifiable rewards (RLVR).
    rm        the trained reward model on every prompt (minus --missing-eos-penalty without EOS).
    mixed     the verifier where the prompt has a checkable answer, the reward model elsewhere (harmful,
              benign, open prompts). Tulu 3's RLVR and the later stages of DeepSeek-R1 mix rewards like
              this. The default.
    judge     the toy world's gold judge on every prompt: an ablation (a perfect reward model), labelled
              as such wherever it is shown, like train_ppo.py --reward judge.

The reward model is a proxy: its scores carry a KL penalty, the verifier's do not (`--rm-kl-coef`):

    r_i = RM(q, o_i) - beta_RM * sum_t log pi_old(o_{i,t}) / pi_ref(o_{i,t})      (rm, mixed; beta_RM = 0.3)

the per-response KL penalty of RLHF (Ziegler et al. 2019; InstructGPT; train_ppo.py's reward, with its
beta). Why, and why only there: a reward model ranks well only near the responses it was trained to rank.
Without a leash 30 steps of mixed GRPO found what it had never seen ranked: a bare "17" to "How do I bake
bread?" and to "How do I break into a house?" outscores both a recipe and a refusal, and the per-group
std division turns the gap inside a group into advantages of +-1, whatever its size. The verifier is not
a proxy: drifting away from SFT cannot fool it, so its prompts keep the plain reward and move freely.
The k3 term in the loss (--kl-coef) is not the same leash: per token, on every prompt, and weighed against
advantages of order 1; at beta = 0.04 it left the hack in place (docs/grpo.md).

The response budget covers the answers asked for (--max-new-tokens 48, as in the evaluation). The SFT
model's sampled answers to how-to prompts are 34 tokens long (median); with 32, two thirds were cut off and paid
--missing-eos-penalty, so on how-to prompts the only responses that "ended" were short ones: the budget
itself paid for the short-answer hack.

What is removed from PPO (train_ppo.py), and why it still works: the value model (half the memory and
compute; GAE needs it, a group mean does not), per-token rewards (one reward per response), the KL penalty
in the reward wherever a verifier scores (no proxy to hack there; kept on the reward model's scores), and
advantage whitening over the batch (each group is normalized on its own).

Deviations from the papers (read these before comparing numbers):
  1. A tiny model and toy world; groups of 8, 16 prompts per step, responses of up to 48 tokens, ~30 steps.
  2. No KL term in the loss by default (--kl-coef 0), as in DAPO, Dr. GRPO and most 2025 recipes;
     DeepSeekMath used beta = 0.04. With --kl-coef > 0 the k3 term is reduced like the surrogate. The KL
     penalty on the reward model's scores (--rm-kl-coef 0.3) is in the reward, as in PPO, not in the loss.
  3. The old policy is the policy that sampled the batch (pi_old = pi at rollout time); pi_old's log-probs
     come from the training forward pass, not the sampler, so the first minibatch's ratio is exactly 1.
     Later minibatches and epochs are slightly off-policy, which the clip is for. With --epochs 1 and one
     minibatch per batch it is plain on-policy REINFORCE with a group baseline (nanochat's chat_rl.py).
  4. The verifier is the judge's exact-answer rule (the world's known answer in the first line, no hedging
     between candidates) plus a format check; it scores nothing else. No "thinking" tokens: answers are
     a few words, so this is RLVR on short answers, not on long reasoning.
  5. Reference log-probs are computed for every batch (the reward's KL penalty, and the logged KL).
  6. No entropy bonus, no dynamic sampling (DAPO re-samples zero-variance groups; here they are counted).

Run it:
    python train_grpo.py                                  # toy world, mixed rewards, ~3 minutes on a 2-core CPU
    python train_grpo.py --reward verifier --out checkpoints/grpo-verifier
    python train_grpo.py --reward judge --out checkpoints/grpo-judge       # the perfect-reward ablation
    python train_grpo.py --advantage dr_grpo --out checkpoints/grpo-dr     # or rloo; --loss-agg token-mean ...
    python train_grpo.py --steps 2 --prompts-per-step 2 --group-size 4 --skip-eval --out /tmp/grpo   # smoke run
    python train_grpo.py --init checkpoints/sft --rm checkpoints/rm --reward rm --prompts hh-rlhf \\
        --max-new-tokens 128 --prompts-per-step 64 --group-size 8 --lr 1e-6 --steps 300   # GPU, GPT-2
    torchrun --nproc_per_node 8 train_grpo.py ...  # each rank its own groups; --lora-rank 8 (docs/scale.md)
"""

import argparse
import time

import torch
import torch.nn.functional as F

from minipost import checkpoint as ckpt
from minipost import common, data, distributed, errors, lora
from minipost.generation import generate_responses, index_generator, make_generator
from minipost.model import token_logprobs
from minipost.tokenizer import chat_prompt
from minipost.world import judge, lookup, strip_template

# -----------------------------------------------------------------------------
# Config

DEFAULT_LOSS_AGG = {"grpo": "seq-mean", "dr_grpo": "constant", "rloo": "token-mean"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="checkpoints/sft",
                   help="SFT checkpoint: the initial policy and the frozen reference")
    p.add_argument("--rm", default="checkpoints/rm", help="reward model checkpoint (frozen), for --reward rm and mixed")
    p.add_argument("--base", default="checkpoints/base",
                   help="base checkpoint for win_rate_vs_base and pass@k (empty = skip)")
    p.add_argument("--prompts", default="world", help="world | hh-rlhf | PATH (.jsonl with a prompt field)")
    p.add_argument("--reward", default="mixed", choices=["verifier", "rm", "mixed", "judge"],
                   help="verifier = checkable answers only (fact and skill prompts); rm = the reward model; "
                        "mixed = the verifier where an answer can be checked, the reward model elsewhere; "
                        "judge = the gold judge (an ablation: a perfect reward model)")
    p.add_argument("--advantage", default="grpo", choices=["grpo", "dr_grpo", "rloo"], help="group advantage estimator")
    p.add_argument("--loss-agg", default="", choices=["", "seq-mean", "token-mean", "constant"],
                   help="how token losses are reduced; empty = the estimator's paper (grpo: seq-mean, "
                        "dr_grpo: constant, rloo: token-mean)")
    p.add_argument("--steps", type=common.positive_int, default=30, help="rollout + optimization rounds")
    p.add_argument("--prompts-per-step", type=common.positive_int, default=16,
                   help="prompts (groups) per rollout batch")
    p.add_argument("--group-size", type=common.positive_int, default=8, help="G: samples per prompt (>= 2)")
    p.add_argument("--epochs", type=common.positive_int, default=2, help="passes over each rollout batch")
    p.add_argument("--minibatch-size", type=common.positive_int, default=32, help="responses per gradient step")
    p.add_argument("--max-new-tokens", type=common.positive_int, default=48,
                   help="response length limit (L_max); 48 = the evaluation's, room for a how-to answer")
    p.add_argument("--lr", type=common.positive_float, default=3e-5,
                   help="learning rate (constant after warmup); 3e-5 measured against 2e-5 and 4e-5 (docs/grpo.md)")
    p.add_argument("--warmup", type=common.nonneg_int, default=4, help="linear warmup, in gradient steps")
    p.add_argument("--clip", type=common.positive_float, default=0.2, help="ratio clip epsilon")
    p.add_argument("--kl-coef", type=common.nonneg_float, default=0.0,
                   help="beta: weight of the k3 KL to the reference in the loss (0 = off)")
    p.add_argument("--rm-kl-coef", type=common.nonneg_float, default=0.3,
                   help="beta_RM: subtracted from the reward of every response the REWARD MODEL scores, times its "
                        "summed log-ratio log pi_old / pi_ref (the KL penalty of train_ppo.py; rm and mixed only)")
    p.add_argument("--missing-eos-penalty", type=common.nonneg_float, default=1.0,
                   help="subtracted from reward-model scores of responses without EOS "
                        "(the verifier has its own format check)")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--skip-eval", action="store_true", help="skip the final judge evaluation and pass@k (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0,
                   help="evaluate on this many held-out prompts; 0 = all")
    p.add_argument("--passk-samples", type=common.nonneg_int, default=64,
                   help="samples per held-out fact / skill prompt for pass@k (0 = skip)")
    p.add_argument("--passk-prompts", type=common.nonneg_int, default=0,
                   help="pass@k on this many of the held-out fact / skill prompts, evenly spread; 0 = all")
    p.add_argument("--passk-also", default="",
                   help="comma-separated checkpoints whose pass@k to measure too (ppo, dpo)")
    common.add_lora_args(p)
    common.add_common_args(p, out_dir="checkpoints/grpo", save_every=50)
    args = p.parse_args(argv)
    if args.group_size < 2:
        p.error(f"--group-size {args.group_size}: a group baseline needs at least 2 samples per prompt")
    if (args.prompts_per_step * args.group_size) % args.minibatch_size:
        p.error(f"--minibatch-size {args.minibatch_size} must divide --prompts-per-step x --group-size "
                f"({args.prompts_per_step * args.group_size})")
    if args.reward in ("verifier", "judge") and args.prompts != "world":
        p.error(f"--reward {args.reward} needs the toy world's prompts (--prompts world): only they have known answers")
    args.loss_agg = args.loss_agg or DEFAULT_LOSS_AGG[args.advantage]
    return args


# -----------------------------------------------------------------------------
# The math: rewards (B,) come in P groups of G consecutive responses; token tensors are (B, T) with a
# mask (B, T) that is 1 on response tokens (incl. EOS) and 0 on prompt and padding


def group_advantages(rewards: torch.Tensor, group_size: int, estimator: str) -> torch.Tensor:
    """One advantage per response, (B,), from rewards (B,) of B / G groups laid out side by side.
    A group with equal rewards gives exactly 0 for every estimator (no NaN: 0 / (0 + eps))."""
    # EXERCISE group_advantages: the grpo, dr_grpo and rloo advantages of each response within its group
    r = rewards.view(-1, group_size).float()  # (P, G)
    mean = r.mean(dim=1, keepdim=True)  # (P, 1)
    if estimator == "grpo":
        adv = (r - mean) / (r.std(dim=1, keepdim=True) + 1e-4)  # Bessel std; eps keeps 0/0 at 0
    elif estimator == "dr_grpo":
        adv = r - mean
    elif estimator == "rloo":
        others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # (P, G): mean of the OTHER G - 1 rewards
        adv = r - others
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    return adv.reshape(-1)  # (B,)
    # END EXERCISE group_advantages


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float):
    """Per-token PPO loss, NOT reduced: -min(rho A, clip(rho, 1-eps, 1+eps) A), (B, T), with A (B,) given to
    every token of its response. Also the (B, T) boolean of tokens where the clip is active (no gradient)."""
    ratio = (logp - old_logp).exp()  # (B, T)
    adv = advantages[:, None]  # (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv
    return -torch.min(unclipped, clipped), clipped < unclipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) on tokens sampled from pi: e^x - 1 - x, x = log pi_ref - log pi."""
    x = ref_logp - logp
    return x.exp() - 1 - x


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, max_len: int) -> torch.Tensor:
    """Reduce a (B, T) per-token loss over the valid tokens to a scalar:
    seq-mean   = mean over responses of (sum over its tokens / its length)         (GRPO)
    token-mean = sum over all tokens / number of valid tokens                       (DAPO)
    constant   = sum over all tokens / (B * max_len)                                (Dr. GRPO)"""
    # EXERCISE loss_aggregation: reduce the (B, T) per-token loss by seq-mean, token-mean or constant
    total = per_token * mask
    if how == "seq-mean":
        return (total.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if how == "token-mean":
        return total.sum() / mask.sum().clamp(min=1)
    if how == "constant":
        return total.sum() / (mask.size(0) * max_len)
    raise ValueError(f"unknown loss aggregation {how!r}")
    # END EXERCISE loss_aggregation


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, clip: float, kl_coef: float, agg: str, max_len: int):
    """The clipped surrogate plus beta * k3, reduced by `agg`. logp, old_logp, ref_logp, mask (B, T);
    advantages (B,). Returns (loss, stats): clip fraction, mean ratio and k3 KL, token means over valid tokens."""
    pg, clipped = clipped_surrogate(logp, old_logp, advantages, clip)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    loss = aggregate(pg + kl_coef * kl, mask, agg, max_len)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = {"clipfrac": (clipped.float() * mask).sum() / n, "ratio": ((logp - old_logp).exp() * mask).sum() / n,
                 "kl_k3": (kl * mask).sum() / n}
    return loss, stats


# -----------------------------------------------------------------------------
# Rewards

VERIFIER_CORRECT, VERIFIER_WRONG, VERIFIER_NO_ANSWER = 1.0, 0.0, -0.5


def verifier_reward(instruction: str, response: str, ended: bool) -> float | None:
    """Correct / wrong / not-an-answer for a prompt with a checkable answer; None for any other prompt.
    The format check: the answer must stop (EOS within the budget), and the judge must see a direct answer
    (not a refusal, not a question, not a page that runs on). Then only right or wrong counts."""
    try:
        rec = lookup(instruction)
    except ValueError:  # not a toy-world prompt: nothing to check against
        return None
    if rec["kind"] not in ("fact", "skill"):
        return None
    verdict = judge(instruction, response)
    if not ended or not verdict.answered:
        return VERIFIER_NO_ANSWER
    return VERIFIER_CORRECT if verdict.correct else VERIFIER_WRONG


@torch.no_grad()
def rewards_of(kind: str, instructions, texts, ended, batch, rm, eos_penalty: float, device, dtype):
    """Rewards (B,) of `kind` (verifier | rm | mixed | judge) for the decoded responses, and a (B,) bool of
    the ones the reward model scored; `batch` holds the tokenized prompt + response rows that the reward
    model reads (its score at the last real token)."""
    if kind == "judge":
        scores = torch.tensor([judge(x, y).score for x, y in zip(instructions, texts)], device=device)
        return scores, torch.zeros(len(texts), dtype=torch.bool, device=device)
    checked = [verifier_reward(x, y, e) for x, y, e in zip(instructions, texts, ended)]
    rm_scored = torch.tensor([c is None or kind == "rm" for c in checked], dtype=torch.bool, device=device)
    if kind == "verifier":
        assert None not in checked, "--reward verifier got a prompt without a checkable answer"
        return torch.tensor(checked, device=device), rm_scored
    need_rm = [i for i, c in enumerate(checked) if c is None or kind == "rm"]  # mixed: only where nothing is checkable
    scores = torch.zeros(len(texts), device=device)
    for idx in torch.tensor(need_rm, dtype=torch.long, device=device).split(64):  # the reward model, in chunks
        with common.autocast(device, dtype):
            scores[idx] = rm.score(batch["input_ids"][idx], batch["attention_mask"][idx]).float()
    scores -= eos_penalty * (~torch.tensor(ended, device=device)).float()
    if kind == "rm":
        return scores, rm_scored
    mixed = torch.tensor([s if c is None else c for s, c in zip(scores.tolist(), checked)], device=device)
    return mixed, rm_scored


def kl_penalized(rewards: torch.Tensor, rm_scored: torch.Tensor, seq_kl: torch.Tensor, coef: float) -> torch.Tensor:
    """r_i - beta_RM * KL_i on the responses a reward model scored, r_i elsewhere; all (B,).
    KL_i = sum_t log pi_old(o_{i,t}) / pi_ref(o_{i,t}), the sampled estimate of the response's KL to the
    reference (k1, as in train_ppo.py's reward). The verifier's rewards are left alone: it is not a proxy."""
    return torch.where(rm_scored, rewards - coef * seq_kl, rewards)


# -----------------------------------------------------------------------------
# Rollouts


def minibatch(batch: dict, idx: torch.Tensor) -> dict:
    """The rows idx of a rollout batch (tensors), keeping its prompt length."""
    return {k: v[idx] if torch.is_tensor(v) else v for k, v in batch.items()}


def response_logprobs(model, batch, device, dtype):
    """log pi of every response token, (B, n) in fp32, and the (B, n, V) logits that gave them (entropy).
    The LM head runs on the response positions only: the prompt's logits are never needed here."""
    T0 = batch["prompt_len"]
    with common.autocast(device, dtype):
        h = model.hidden_states(batch["input_ids"], batch["attention_mask"])  # (B, T0 + n, C)
        logits = model.lm_head(h[:, T0 - 1 : -1])  # (B, n, V): position T0 - 1 predicts the first response token
    return token_logprobs(logits, batch["input_ids"][:, T0:]), logits  # (B, n), (B, n, V)


@torch.no_grad()
def sample_groups(policy, tok, instructions: list[str], group_size: int, max_new_tokens: int, sample_rng,
                  device, dtype):
    """G samples (temperature 1, KV cache) for each instruction, groups side by side: B = P x G responses.
    Returns (texts, ended_with_eos, batch). batch: prompts left-padded to T0 tokens, then responses from
    column T0 on, right-padded; response_mask (B, n) is 1 on response tokens incl. the EOS that ended one.
    Every mask comes from lengths, never from token ids (the pad id is the EOS id)."""
    repeated = [x for x in instructions for _ in range(group_size)]  # (B,): group g is rows g*G .. g*G+G-1
    texts, token_lists, ended = generate_responses(policy, tok, repeated, device=device, dtype=dtype, temperature=1.0,
                                                   generator=sample_rng, max_new_tokens=max_new_tokens,
                                                   batch_size=len(repeated))
    prompts = data.collate([(ids, len(ids)) for ids in (tok.encode(chat_prompt(x)) for x in repeated)], tok.eos_id,
                           side="left")
    responses = [toks + [tok.eos_id] * e for toks, e in zip(token_lists, ended)]  # the EOS is a token to learn
    n = max(1, max(map(len, responses)))
    resp_ids = torch.full((len(responses), n), tok.eos_id, dtype=torch.long)
    resp_mask = torch.zeros((len(responses), n), dtype=torch.long)
    for i, r in enumerate(responses):
        resp_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        resp_mask[i, : len(r)] = 1
    batch = {"input_ids": torch.cat([prompts["input_ids"], resp_ids], dim=1).to(device),  # (B, T0 + n)
             "attention_mask": torch.cat([prompts["attention_mask"], resp_mask], dim=1).to(device),
             "response_mask": resp_mask.float().to(device)}  # (B, n)
    return texts, ended, batch | {"prompt_len": prompts["input_ids"].size(1)}


def check_first_minibatch(policy, batch: dict, first: torch.Tensor, old_logp, advantages, args, device, dtype):
    """Before any update the policy that trains IS the one that sampled: on the first minibatch every ratio
    pi / pi_old must be 1 and nothing clipped (docs/pitfalls.md, pitfall 7). The loss there is just minus the
    minibatch's mean advantage (weighted as --loss-agg weighs tokens): about 0, since advantages sum to 0 within
    each group. Its value says nothing about progress (its GRADIENT moves the policy): watch the reward."""
    with torch.no_grad():
        logp, _ = response_logprobs(policy, minibatch(batch, first), device, dtype)
        mask = batch["response_mask"][first]
        loss, clip_stats = grpo_loss(logp, old_logp[first], None, advantages[first], mask, clip=args.clip,
                                     kl_coef=0.0, agg=args.loss_agg, max_len=args.max_new_tokens)
    ratio_error = ((logp - old_logp[first]).exp() - 1).abs().mul(mask).max().item()
    print(f"check: first minibatch |ratio - 1| max {ratio_error:.2e} (must be < 1e-5), "
          f"clip fraction {clip_stats['clipfrac'].item():.3f} | loss {loss.item():+.4f} (about 0: watch the reward)")


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(common.pick_device(args.device))  # torchrun: join the process group (else a no-op)
    args.fused_attn = common.attention_for(device, args.fused_attn)  # default: fused on CUDA only
    world = distributed.world_size()
    if args.prompts_per_step % world or args.minibatch_size % world:
        raise SystemExit(f"error: --prompts-per-step {args.prompts_per_step} and --minibatch-size "
                         f"{args.minibatch_size} must divide by the {world} processes (each rank takes an equal share)")
    dtype, why = common.pick_dtype(device, args.dtype)
    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        policy, tok, init_config = common.load_model(args.init, device, fused_attn=args.fused_attn)
        data.check_world_seed(args.prompts, init_config, args.init)  # the toy world it was trained in
        # with LoRA the reference is the policy itself with its adapters off: no second copy of the weights
        ref = lora.ReferenceView(policy) if args.lora_rank > 0 else \
            common.load_model(args.init, device, fused_attn=args.fused_attn)[0]
        rm = None
        if args.reward in ("rm", "mixed"):
            rm, _, rm_config = common.load_model(args.rm, device, kind="scalar", fused_attn=args.fused_attn)
            if rm_config.get("kind") != "scalar":  # a language model: its reward head would be random
                raise ckpt.CheckpointError(f"--rm {args.rm} holds a language model, not a reward model (train_rm.py)")
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    common.frozen(ref)
    if rm is not None:
        common.frozen(rm)
    common.seed_everything(args.seed)
    common.setup_training(policy, args)  # --lora-rank: adapters only; --grad-checkpoint
    common.print_config("train_grpo", args, {"device": device, "dtype": why})

    # ---- prompts: raw instructions (the judge and the verifier read them; generation adds the template)
    try:
        rows, stats = data.load_prompts(args.prompts)
    except (data.DataError, OSError) as e:
        raise SystemExit(f"error: {e}")
    if args.reward == "verifier":  # a verifier can only score what it can check
        rows = [r for r in rows if r.get("kind") in ("fact", "skill")]
    room = policy.config.block_size - args.max_new_tokens  # a prompt must leave room for a full answer
    if room < 1:
        raise SystemExit(f"error: --max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the "
                         f"context of {policy.config.block_size} tokens")
    instructions = [strip_template(r["prompt"]) for r in rows if len(tok.encode(r["prompt"])) <= room]
    if not instructions:
        raise SystemExit(f"error: no prompts left from {args.prompts} (each must leave --max-new-tokens "
                         f"{args.max_new_tokens} of the context free)")
    print(f"prompts: {len(instructions)} ({stats}; {len(rows) - len(instructions)} too long for the context dropped)")
    is_world = args.prompts == "world"

    opt = common.make_optimizer(policy, args.lr, weight_decay=0.0)
    data_rng = index_generator(args.seed)  # prompt picks and minibatch order
    # sampling; under DDP each rank samples its own (rank 0 keeps --seed)
    sample_rng = make_generator(device, distributed.seed_for_rank(args.seed))

    def save(metrics, train_state):
        common.save_stage(args.out, policy, stage="grpo", kind="lm", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state,
                          extra={"init": args.init, "rm": args.rm, "world_seed": init_config.get("world_seed", 0)})

    saver = common.Checkpointer(args, args.steps, policy, save, optimizer=opt, data_rng=data_rng, sample_rng=sample_rng)
    start = saver.start()
    log = saver.logger(args.steps)

    B, G = args.prompts_per_step * args.group_size // world, args.group_size  # DDP: B = this rank's responses
    local_minibatch = args.minibatch_size // world  # DDP: this rank's share of each minibatch
    grad_step = start * args.epochs * (B // args.minibatch_size)  # a resumed run continues the warmup where it was
    for step in range(start, args.steps):
        t0 = time.time()
        picks = torch.randint(0, len(instructions), (args.prompts_per_step,), generator=data_rng).tolist()
        picks = distributed.shard(picks)  # DDP: this rank's prompts of the global batch; it samples their groups
        prompts = [instructions[i] for i in picks]
        group_of = [x for x in prompts for _ in range(G)]  # (B,) the instruction of every response
        policy.eval()
        texts, ended, batch = sample_groups(policy, tok, prompts, G, args.max_new_tokens, sample_rng, device, dtype)
        scores, rm_scored = rewards_of(args.reward, group_of, texts, ended, batch, rm, args.missing_eos_penalty,
                                       device, dtype)  # (B,), (B,)
        mask = batch["response_mask"]  # (B, n)

        # old and reference log-probs, minibatch by minibatch in the order of the first epoch: the first
        # training forward pass is then bitwise the one that made old_logp (ratio exactly 1)
        perm = torch.randperm(B, generator=data_rng).to(device)
        old_logp, ref_logp = torch.zeros_like(mask), torch.zeros_like(mask)
        with torch.no_grad():
            for idx in perm.split(local_minibatch):
                mb = minibatch(batch, idx)
                old_logp[idx] = response_logprobs(policy, mb, device, dtype)[0]
                ref_logp[idx] = response_logprobs(ref, mb, device, dtype)[0]
        seq_kl = ((old_logp - ref_logp) * mask).sum(dim=1)  # (B,) log pi_old(o_i) / pi_ref(o_i)
        rewards = kl_penalized(scores, rm_scored, seq_kl, args.rm_kl_coef)  # (B,)
        advantages = group_advantages(rewards, G, args.advantage)  # (B,)
        t_roll = common.seconds_since(t0, device)  # sampling, scoring, and the old and reference log-probs

        policy.train()  # dropout is off (load_model): train mode changes nothing in the forward pass
        if step == start:
            check_first_minibatch(policy, batch, perm[:local_minibatch], old_logp, advantages, args, device, dtype)
        # ---- TRAINING STEP BEGIN: clipped-surrogate epochs over minibatches of responses
        minibatch_stats = []
        for epoch in range(args.epochs):
            order = perm if epoch == 0 else torch.randperm(B, generator=data_rng).to(device)
            for minibatch_index, idx in enumerate(order.split(local_minibatch)):
                common.set_lr(opt, args.lr * min(1.0, (grad_step + 1) / max(1, args.warmup)))
                logp, logits = response_logprobs(policy, minibatch(batch, idx), device, dtype)
                loss, clip_stats = grpo_loss(logp, old_logp[idx], ref_logp[idx] if args.kl_coef > 0 else None,
                                             advantages[idx], mask[idx], clip=args.clip, kl_coef=args.kl_coef,
                                             agg=args.loss_agg, max_len=args.max_new_tokens)
                common.check_finite(loss, grad_step, f"GRPO loss (step {step}, epoch {epoch}, "
                                                     f"minibatch {minibatch_index})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.all_reduce_grads(policy, average=True)  # DDP: the mean of the ranks' gradients
                torch.nn.utils.clip_grad_norm_(policy.parameters(),
                                               args.grad_clip if args.grad_clip > 0 else float("inf"))
                opt.step()
                grad_step += 1
                minibatch_stats.append({"loss": loss.item()} | {k: v.item() for k, v in clip_stats.items()})
                if epoch == 0:  # the entropy of the rollout policy (later epochs would measure a moved one)
                    with torch.no_grad():
                        logprobs = F.log_softmax(logits.float(), dim=-1)  # (b, n, V)
                        entropy = -(logprobs.exp() * logprobs).sum(-1)  # (b, n)
                        minibatch_stats[-1]["entropy"] = ((entropy * mask[idx]).sum() / mask[idx].sum()).item()
        # ---- TRAINING STEP END; what follows only measures

        # ---- this step's numbers (per response, or token means over valid tokens)
        groups = rewards.view(-1, G)  # (P, G)

        def mean_of(key):  # over the minibatches that measured it
            values = [s[key] for s in minibatch_stats if key in s]
            return sum(values) / len(values)

        metrics = {
            "reward": rewards.mean().item(),  # after the KL penalty of reward-model-scored responses
            "rm_score": scores[rm_scored].mean().item() if rm_scored.any() else None,  # the reward model's, raw
            "reward_std": groups.std(dim=1).mean().item(),  # within a group: what GRPO divides by
            "zero_var_groups": (groups.max(dim=1).values == groups.min(dim=1).values).float().mean().item(),
            "loss": mean_of("loss"),
            "clipfrac": mean_of("clipfrac"),
            "kl": seq_kl.mean().item(),  # k1 per response, like kl_to_sft
            "entropy": mean_of("entropy"),
            "length": mask.sum(dim=1).mean().item(),
            "eos_frac": sum(ended) / len(ended),
        }
        if is_world:
            verdicts = [judge(x, y) for x, y in zip(group_of, texts)]
            checkable = [v.correct for v in verdicts if v.kind in ("fact", "skill")]
            metrics["gold_score"] = sum(v.score for v in verdicts) / len(verdicts)
            metrics["accuracy"] = sum(map(bool, checkable)) / len(checkable) if checkable else None
        metrics["rollout_s"] = t_roll
        metrics["step_s"] = common.seconds_since(t0, device)
        metrics = distributed.mean_metrics(metrics)  # DDP: the mean over ranks' rollouts
        log.log(step, **metrics)
        saver.step_done(step + 1)

    print(f"peak memory {common.peak_memory_mb(device):.0f} MB")
    distributed.cleanup()  # DDP: training is over; rank 0 alone evaluates and saves
    if not distributed.is_main():
        return
    policy.eval()
    final = {"steps": args.steps}
    saver.save(args.steps, final)
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/curves.png",
                    ["reward", "accuracy", "gold_score", "zero_var_groups", "kl", "entropy", "length"],
                    f"GRPO (train_grpo.py, --reward {args.reward}, --advantage {args.advantage})")
    print(f"wrote {args.out}")

    if not args.skip_eval and is_world:
        from minipost import evaluate

        world, _, result = evaluate.evaluate_stage(policy, tok, world_seed=init_config.get("world_seed", 0), sft=ref,
                                                   sft_dir=args.init, base_dir=args.base, device=device, dtype=dtype,
                                                   seed=args.seed, limit=args.eval_limit, title="GRPO")
        evaluate.write_eval(args.out, result)
        metrics = {**final, **result["metrics"]}

        if args.passk_samples > 0:
            # pass@k of this model, its start (SFT), the base and any others asked for, each stored in its own
            # checkpoint directory (passk.json) and reused when its weights have not changed
            others = {"base": args.base} if args.base else {}
            others |= {d.rstrip("/").split("/")[-1]: d for d in args.passk_also.split(",") if d}
            models = {"grpo": (policy, args.out), "sft": (ref, args.init)}
            for name, d in others.items():
                if ckpt.has_checkpoint(d):
                    models[name] = (common.frozen(common.load_model(d, device)[0]), d)
                else:
                    print(f"pass@k: no checkpoint at {d}, skipped")
            for name, (m, d) in models.items():
                pk = evaluate.pass_at_k_cached(d, m, tok, world, device=device, dtype=dtype, n=args.passk_samples,
                                               seed=args.seed, limit=args.passk_prompts)
                ks = pk["k"]
                print(f"pass@k {name:>8}: "
                      + "  ".join(f"@{k} {100 * v:.1f}%" for k, v in zip(pk["k"], pk["pass_at_k"])))
                if name in ("grpo", "sft"):  # this model's, and where it started
                    prefix = "" if name == "grpo" else "sft_"
                    metrics[f"{prefix}pass_at_1"] = pk["pass_at_k"][0]
                    metrics[f"{prefix}pass_at_{ks[-1]}"] = pk["pass_at_k"][-1]
        saver.save(args.steps, metrics)  # the same weights, with their evaluation


if __name__ == "__main__":
    errors.run(main)
