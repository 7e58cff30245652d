"""
Stage 3 — RLHF with PPO: maximize the reward model's score while a KL penalty keeps the policy near SFT.
Teaches: policy-gradient RL against a learned reward, held near SFT by a KL penalty, and what goes wrong without it.

The objective (Ouyang et al. 2022, InstructGPT eq. 2, without the pre-training mix):

    maximize_pi  E_{x ~ prompts, y ~ pi(.|x)} [ r(x, y) ] - beta * KL( pi(.|x) || pi_ref(.|x) )

The reward model r is only a proxy of what people want; optimized without the KL term, the policy finds
outputs the proxy overrates ("reward hacking"). Run `--kl-coef 0` to watch the RM score climb while the
gold judge's score stalls or falls and the KL grows without bound.

How it is optimized (Schulman et al. 2017; Ziegler et al. 2019; the "N implementation details of RLHF"):
  1. Rollout: sample a response for each prompt from pi at temperature 1 (no top-k / top-p: filtering
     changes the distribution and breaks the KL estimate), up to --max-new-tokens, stopping at EOS.
  2. Score: log-probs of pi (the "old" policy) and pi_ref, values V, and r = RM(prompt + response) at the
     last real token. Old log-probs come from the same forward pass that training uses, not from the
     sampler, so the first PPO ratio is exactly 1 (checked and printed).
  3. Per-token rewards: r_t = -beta * kl_t at every response token, plus the RM score (minus a penalty
     if the response hit the length limit without EOS) at the last token. kl_t = log pi - log pi_ref (k1)
     or the always-positive k3 = (ratio - 1) - log ratio with ratio = pi_ref / pi.
  4. Generalized advantage estimation (Schulman et al. 2016) over response tokens:
         delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lambda * A_{t+1},   R_t = A_t + V_t
     then advantages are whitened over the valid tokens of the batch.
  5. Several epochs over shuffled minibatches of the clipped surrogate (token mean over valid tokens):
         L_pi = - mean_t min( rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t ),   rho_t = pi(y_t) / pi_old(y_t)
     and the clipped value loss  L_V = 0.5 * mean_t max( (V - R)^2, (V_old + clip(V - V_old, ±eps_v) - R)^2 ).
  6. beta is fixed (--kl-coef) or adapted toward a target KL (Ziegler et al. 2019, --target-kl).

Models: policy and frozen reference = SFT; frozen reward = checkpoints/rm (with its normalization); a
separate value model initialized from the reward model. Dropout is off everywhere.

`--reward judge` (toy world) replaces the reward model by the gold judge: PPO with a perfect reward model,
which separates what the RM's errors cost from what the optimization itself reaches in the time given.

Simplifications versus InstructGPT: no pre-training gradient mix (PPO-ptx); one prompt set; small
batches; a tiny model.

Run it:
    python train_ppo.py                                    # toy world, about 2 minutes on a 2-core CPU
    python train_ppo.py --kl-coef 0 --out checkpoints/ppo-nokl    # reward hacking, for comparison
    python train_ppo.py --iterations 2 --batch-size 8 --skip-eval --out /tmp/ppo   # smoke run
    python train_ppo.py --init checkpoints/sft --rm checkpoints/rm --prompts hh-rlhf --max-new-tokens 128 \\
        --batch-size 64 --lr 1e-6 --iterations 500        # GPU, official GPT-2 pipeline
    torchrun --nproc_per_node 8 train_ppo.py ...   # each rank its own rollouts; --lora-rank 8 (docs/scale.md)
"""

import argparse
import time

import torch
import torch.nn.functional as F

from minipost import checkpoint as ckpt
from minipost import common, data, distributed, errors, generation, lora
from minipost.model import token_logprobs

# -----------------------------------------------------------------------------
# Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="checkpoints/sft",
                   help="SFT checkpoint: the initial policy and the frozen reference")
    p.add_argument("--rm", default="checkpoints/rm",
                   help="reward model checkpoint (frozen); the value model starts from it")
    p.add_argument("--base", default="checkpoints/base", help="base checkpoint for win_rate_vs_base (empty = skip)")
    p.add_argument("--prompts", default="world",
                   help="world | hh-rlhf | alpaca | dolly | PATH (.json / .jsonl / .jsonl.gz: {prompt}, {messages}, "
                        "Alpaca/Dolly rows, or preference pairs such as the HH-RLHF file the reward model trained on)")
    p.add_argument("--iterations", type=common.positive_int, default=25, help="rollout + optimization rounds")
    p.add_argument("--batch-size", type=common.positive_int, default=64, help="prompts (rollouts) per iteration")
    p.add_argument("--minibatch-size", type=common.positive_int, default=16, help="rollouts per PPO gradient step")
    p.add_argument("--ppo-epochs", type=common.positive_int, default=4, help="passes over each rollout batch")
    p.add_argument("--max-new-tokens", type=common.positive_int, default=32, help="response length limit")
    p.add_argument("--max-prompt-tokens", type=common.auto_int, default=-1,
                   help="prompts longer than this are LEFT-truncated (their last turns kept), like every stage's; "
                        "-1 = the context minus --max-new-tokens, so every rollout has room for a full answer")
    p.add_argument("--lr", type=common.positive_float, default=1e-5,
                   help="policy learning rate (constant after warmup)")
    p.add_argument("--value-lr", type=common.positive_float, default=1e-4, help="value model learning rate")
    p.add_argument("--warmup", type=common.nonneg_int, default=5, help="linear warmup, in gradient steps")
    p.add_argument("--reward", default="rm", choices=["rm", "judge"],
                   help="rm = the reward model (RLHF); judge = the toy world's gold judge itself, a perfect reward "
                        "model: "
                        "an ablation that shows how much of the gap is the RM's fault")
    p.add_argument("--kl-coef", type=common.nonneg_float, default=0.3,
                   help="beta: weight of the KL penalty (0 = no penalty)")
    p.add_argument("--kl-estimator", default="k1", choices=["k1", "k3"], help="per-token KL estimate in the reward")
    p.add_argument("--target-kl", type=common.nonneg_float, default=0.0,
                   help="adaptive beta toward this KL per response (0 = fixed beta)")
    p.add_argument("--kl-horizon", type=common.positive_int, default=10000,
                   help="adaptive controller horizon, in rollouts")
    p.add_argument("--gamma", type=common.unit_float, default=1.0, help="discount over response tokens")
    p.add_argument("--lam", type=common.unit_float, default=0.95, help="GAE lambda")
    p.add_argument("--clip", type=common.positive_float, default=0.2, help="PPO ratio clip epsilon")
    p.add_argument("--value-clip", type=common.positive_float, default=0.2, help="value clip range")
    p.add_argument("--vf-coef", type=common.nonneg_float, default=0.5,
                   help="weight of the value loss (it has its own model)")
    p.add_argument("--missing-eos-penalty", type=common.nonneg_float, default=1.0,
                   help="subtracted from the score of responses without EOS")
    p.add_argument("--whiten-rewards", action="store_true", help="whiten RM scores across each rollout batch")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--skip-eval", action="store_true", help="skip the final judge evaluation (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0,
                   help="evaluate on this many held-out prompts; 0 = all")
    p.add_argument("--samples", type=common.nonneg_int, default=8,
                   help="real data: prompts held out of training and answered by SFT and PPO side by side at the "
                        "end (printed, with their reward, and written to samples.jsonl)")
    common.add_lora_args(p)
    common.add_common_args(p, out_dir="checkpoints/ppo", save_every=50)
    args = p.parse_args(argv)
    if args.batch_size % args.minibatch_size:
        p.error(f"--minibatch-size {args.minibatch_size} must divide --batch-size {args.batch_size}")
    if args.reward == "judge" and args.prompts != "world":
        p.error("--reward judge needs the toy world's prompts (--prompts world): only they have a gold judge")
    return args


# -----------------------------------------------------------------------------
# The math: plain functions on (B, n) tensors over response tokens; mask (B, n) is 1 on valid tokens


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over valid tokens. One valid token has std 0: the epsilon keeps it finite."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi. With logr = ref_logp - logp:
    k1 = -logr (unbiased, can be negative per token), k2 = logr^2 / 2, k3 = exp(logr) - 1 - logr (>= 0, unbiased)."""
    # EXERCISE kl_estimators: the k1, k2, k3 estimates of KL(pi || pi_ref) per sampled token
    logr = ref_logp - logp
    if estimator == "k1":
        return -logr
    if estimator == "k2":
        return 0.5 * logr**2
    if estimator == "k3":
        return logr.exp() - 1 - logr
    raise ValueError(f"unknown KL estimator {estimator!r}")
    # END EXERCISE kl_estimators


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * kl_t on every valid token, plus the sequence score (B,) on the last valid token. (B, n)."""
    # EXERCISE token_rewards: -beta * KL on every response token, plus the score on the last one
    rewards = -beta * kl * mask
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()  # (B,): responses are left-aligned, so index = length - 1
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))
    # END EXERCISE token_rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation over response tokens. (advantages, returns), each (B, n).
    The value after the last valid token is 0 (the episode ends there)."""
    # EXERCISE gae: advantages and returns by the backward GAE recursion, stopping at each response's end
    B, n = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(n)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        # padding after the end carries nothing back: reset the recursion on invalid tokens
        next_adv = adv * m
        next_value = values[:, t] * m
    return advantages, advantages + values * mask
    # END EXERCISE gae


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float):
    """Clipped surrogate, token mean over valid tokens: -mean min(rho A, clip(rho, 1-eps, 1+eps) A).
    Returns (loss, stats) with the clip fraction and the mean/max ratio."""
    # EXERCISE ppo_clip: the clipped surrogate loss, token mean over valid tokens
    ratio = (logp - old_logp).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    loss = masked_mean(-torch.min(unclipped, clipped), mask)
    # END EXERCISE ppo_clip
    with torch.no_grad():
        clipfrac = masked_mean((clipped < unclipped).float(), mask)  # tokens where the clip is active
        ratio_on_valid = torch.where(mask.bool(), ratio, torch.zeros_like(ratio))  # padding can't be the max
        stats = {"clipfrac": clipfrac, "ratio_mean": masked_mean(ratio, mask), "ratio_max": ratio_on_valid.max(),
                 "approx_kl": masked_mean((ratio - 1) - (logp - old_logp), mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float):
    """Clipped value loss, token mean: 0.5 * mean max((V - R)^2, (V_old + clip(V - V_old) - R)^2)."""
    # EXERCISE value_clip: the clipped value loss, token mean over valid tokens
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    # END EXERCISE value_clip


class AdaptiveKL:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int):
        if self.target > 0:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.beta *= 1 + error * n / self.horizon


# -----------------------------------------------------------------------------
# Rollouts


def response_mask_after(new_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, n) 1 on response tokens up to and including the first EOS, 0 after. From positions, not ids
    alone: the sampler pads finished rows with EOS, and only the FIRST EOS is real."""
    is_eos = (new_ids == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before t
    return (eos_before == 0).long()


def forward_response(model, ids, attn, T0, device, dtype):
    """Log-probs (B, n) of the response tokens ids[:, T0:] under `model`, and the logits that gave them.
    The LM head runs on the response positions only: a prompt's logits are never needed, and with GPT-2's
    50,257-token head they are most of the memory (B x L x V floats, where L may be 1,000 prompt tokens)."""
    with common.autocast(device, dtype):
        h = model.hidden_states(ids, attn)  # (B, L, C)
        logits = model.lm_head(h[:, T0 - 1 : -1])  # (B, n, V): position t predicts token t + 1
    logits = logits.float()
    return token_logprobs(logits, ids[:, T0:]), logits  # (B, n), (B, n, V)


def forward_values(value_model, ids, attn, T0, device, dtype):
    """V (B, n) of the state before each response token."""
    with common.autocast(device, dtype):
        v = value_model(ids, attn)  # (B, L)
    return v[:, T0 - 1 : -1].float()


def response_texts(new_ids: torch.Tensor, resp_mask: torch.Tensor, tok) -> list[str]:
    """The decoded responses (B strings): tokens up to the first EOS, which decode() drops."""
    return [tok.decode(row[: int(k)]) for row, k in zip(new_ids.tolist(), resp_mask.sum(dim=1).tolist())]


@torch.no_grad()
def rollout(policy, ref, rm, value_model, tok, prompts, enc, args, beta, sample_rng, device, dtype, perm):
    """Sample responses and compute everything PPO needs, in the minibatch order `perm` (docs/pitfalls.md, 7).
    prompts: the templated texts (for the judge); enc: their token ids, truncated to leave room for an answer."""
    batch = data.collate([(e, len(e)) for e in enc], tok.eos_id, side="left")
    prompt_ids, prompt_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    T0 = prompt_ids.size(1)
    budget = min(args.max_new_tokens, policy.config.block_size - T0)
    with common.autocast(device, dtype):
        ids = policy.generate(prompt_ids, budget, temperature=1.0, attention_mask=prompt_mask,
                              eos_token_id=tok.eos_id, generator=sample_rng)  # (B, T0 + n)
    new = ids[:, T0:]
    if new.size(1) == 0:
        raise RuntimeError(f"prompts of {T0} tokens leave no room for a response in the context of "
                           f"{policy.config.block_size}")
    resp_mask = response_mask_after(new, tok.eos_id)  # (B, n)
    attn = torch.cat([prompt_mask, resp_mask], dim=1)  # (B, L)
    has_eos = ((new == tok.eos_id).long() * resp_mask).sum(dim=1) > 0  # (B,)

    # old log-probs, reference log-probs, values and scores, computed minibatch by minibatch in the order
    # of the first PPO epoch, so that its first forward pass is bitwise the one that made old_logp
    B, n = new.shape
    old_logp = torch.zeros(B, n, device=device)
    ref_logp = torch.zeros(B, n, device=device)
    old_values = torch.zeros(B, n, device=device)
    scores = torch.zeros(B, device=device)
    for idx in perm.split(args.minibatch_size):
        old_logp[idx], _ = forward_response(policy, ids[idx], attn[idx], T0, device, dtype)
        ref_logp[idx], _ = forward_response(ref, ids[idx], attn[idx], T0, device, dtype)
        old_values[idx] = forward_values(value_model, ids[idx], attn[idx], T0, device, dtype)
        with common.autocast(device, dtype):
            scores[idx] = rm.score(ids[idx], attn[idx]).float()  # at the last real token
    mask = resp_mask.float()
    rm_score = scores.clone()
    if args.reward == "judge":  # the ablation: the gold judge replaces the reward model (its score in [-1, 1])
        from minipost.world import judge, strip_template

        texts = response_texts(new, resp_mask, tok)
        scores = torch.tensor([judge(strip_template(p), y).score for p, y in zip(prompts, texts)], device=device)
    scores = scores - args.missing_eos_penalty * (~has_eos).float()  # once per response, response only
    if args.whiten_rewards:
        scores = (scores - scores.mean()) / (scores.std() + 1e-8)
    kl = kl_per_token(old_logp, ref_logp, args.kl_estimator) * mask  # (B, n)
    rewards = token_rewards(scores, kl, mask, beta)
    advantages, returns = gae(rewards, old_values, mask, args.gamma, args.lam)
    advantages = masked_whiten(advantages, mask)
    return dict(ids=ids, attn=attn, T0=T0, mask=mask, old_logp=old_logp, old_values=old_values,
                advantages=advantages, returns=returns, rm_score=rm_score, kl=kl, rewards=rewards, has_eos=has_eos,
                new=new)


@torch.no_grad()
def check_first_minibatch(policy, rollouts: dict, first: torch.Tensor, args, device, dtype):
    """Before any update the policy that trains IS the one that sampled: on the first minibatch every ratio
    pi / pi_old must be 1 and nothing clipped (docs/pitfalls.md, pitfall 7) -- else rollout and training
    forwards differ (temperature, dropout, positions). Run once, in train mode, on the minibatch PPO starts with."""
    mask = rollouts["mask"][first]
    logp, _ = forward_response(policy, rollouts["ids"][first], rollouts["attn"][first], rollouts["T0"], device, dtype)
    _, clip_stats = policy_loss(logp, rollouts["old_logp"][first], rollouts["advantages"][first], mask, args.clip)
    ratio_error = (clip_stats["ratio_max"] - 1).abs().item()
    ratio_error = max(ratio_error, masked_mean(((logp - rollouts["old_logp"][first]).exp() - 1).abs(), mask).item())
    print(f"check: first minibatch |ratio - 1| max {ratio_error:.2e} (must be < 1e-5), "
          f"clip fraction {clip_stats['clipfrac'].item():.3f}")


def explained_variance(values, returns, mask) -> float:
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return (1 - var_d / var_r.clamp(min=1e-8)).item()


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(common.pick_device(args.device))  # torchrun: join the process group (else a no-op)
    args.fused_attn = common.attention_for(device, args.fused_attn)  # default: fused on CUDA only
    world = distributed.world_size()
    if args.batch_size % world or args.minibatch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} and --minibatch-size {args.minibatch_size} must "
                         f"divide by the {world} processes (each rank takes an equal share)")
    dtype, why = common.pick_dtype(device, args.dtype)
    # ---- prompts first: a bad or empty prompt set is reported before any model loads
    try:
        rows, stats = data.load_prompts(args.prompts)
        data_fingerprint = data.data_fingerprint(args.prompts)  # the sha256 of the files, for the checkpoint
    except (data.DataError, OSError) as e:
        raise SystemExit(f"error: {e}")
    prompts = [r["prompt"] for r in rows]  # templated text for the model (and the judge strips the template)
    judge = None
    if args.prompts == "world":
        from minipost.world import judge, strip_template
    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        policy, tok, init_config = common.load_model(args.init, device, fused_attn=args.fused_attn)
        data.check_world_seed(args.prompts, init_config, args.init)  # the toy world it was trained in
        # the context must leave room for a prompt and a full answer: said before the other models load
        room = args.max_new_tokens
        budget = policy.config.block_size - room if args.max_prompt_tokens < 0 else args.max_prompt_tokens
        if not 1 <= budget <= policy.config.block_size - room:
            raise SystemExit(f"error: prompts of up to {budget} tokens and --max-new-tokens {room} do not fit the "
                             f"context of {policy.config.block_size} tokens; lower --max-new-tokens or "
                             f"--max-prompt-tokens")
        # with LoRA the reference is the policy itself with its adapters off: no second copy of the weights
        ref = lora.ReferenceView(policy) if args.lora_rank > 0 else \
            common.load_model(args.init, device, fused_attn=args.fused_attn)[0]
        rm, _, rm_config = common.load_model(args.rm, device, kind="scalar", fused_attn=args.fused_attn)
        if args.reward == "rm" and rm_config.get("kind") != "scalar":  # a language model: a random reward head
            raise ckpt.CheckpointError(f"--rm {args.rm} holds a language model, not a reward model (train_rm.py)")
        value_model, _, _ = common.load_model(args.rm, device, kind="scalar", fused_attn=args.fused_attn)
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    common.frozen(ref)
    common.frozen(rm)
    common.seed_everything(args.seed)
    common.setup_training(policy, args)  # --lora-rank: adapters only; --grad-checkpoint
    common.setup_training(value_model, args, train_also=("head",))  # the value model too (its head trains fully)
    common.print_config("train_ppo", args, {"device": device, "dtype": why})

    # ---- prompts, left-truncated like every stage's, so that a full answer always fits the context
    enc, enc_stats = data.encode_prompts(tok, prompts, budget)
    print(f"prompts: {len(prompts)} ({stats}); {enc_stats['prompt_truncated']} left-truncated to {budget} tokens "
          f"(context {policy.config.block_size} - max-new-tokens {room})")
    # real data has no judge: a few prompts stay out of training, for side-by-side samples at the end
    held = set(range(len(prompts))[:: max(1, len(prompts) // args.samples)][: args.samples]) \
        if args.prompts != "world" and args.samples and len(prompts) > args.samples else set()
    sample_prompts = [enc[i] for i in sorted(held)]
    prompts, enc = [p for i, p in enumerate(prompts) if i not in held], [e for i, e in enumerate(enc) if i not in held]

    opt_pi = common.make_optimizer(policy, args.lr, weight_decay=0.0)
    opt_v = common.make_optimizer(value_model, args.value_lr, weight_decay=0.0)
    kl_ctl = AdaptiveKL(args.kl_coef, args.target_kl, args.kl_horizon)
    data_rng = generation.index_generator(args.seed)  # prompts and minibatch order
    # the responses; under DDP each rank samples its own (rank 0 keeps --seed)
    sample_rng = generation.make_generator(device, distributed.seed_for_rank(args.seed))
    local_batch, local_minibatch = args.batch_size // world, args.minibatch_size // world  # DDP: this rank's share

    def save(metrics, train_state):
        common.save_stage(args.out, policy, stage="ppo", kind="lm", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state,
                          extra={"init": args.init, "rm": args.rm, "world_seed": init_config.get("world_seed", 0),
                                 "data": data_fingerprint})

    saver = common.Checkpointer(args, args.iterations, policy, save, opt_pi=opt_pi, opt_v=opt_v,
                                value_model=value_model, data_rng=data_rng, sample_rng=sample_rng, kl_ctl=kl_ctl)
    start = saver.start()
    log = saver.logger(args.iterations)

    steps_per_iteration = args.ppo_epochs * len(range(0, args.batch_size, args.minibatch_size))  # gradient steps
    grad_step = start * steps_per_iteration  # a resumed run continues the learning-rate warmup where it was
    for it in range(start, args.iterations):
        t0 = time.time()
        picks = torch.randint(0, len(prompts), (args.batch_size,), generator=data_rng).tolist()
        picks = distributed.shard(picks)  # DDP: this rank's prompts of the global batch; it samples their rollouts
        batch_prompts = [prompts[i] for i in picks]
        perm = torch.randperm(local_batch, generator=data_rng).to(device)
        policy.eval()
        rollouts = rollout(policy, ref, rm, value_model, tok, batch_prompts, [enc[i] for i in picks], args,
                           kl_ctl.beta, sample_rng, device, dtype, perm)
        t_roll = common.seconds_since(t0, device)  # after the device's queued work
        mask, T0 = rollouts["mask"], rollouts["T0"]

        policy.train()
        value_model.train()
        if it == start:
            check_first_minibatch(policy, rollouts, perm[:local_minibatch], args, device, dtype)
        # ---- TRAINING SECTION BEGIN: PPO epochs over minibatches (epoch 0 in the rollout's order, then reshuffled)
        minibatch_stats = []
        for epoch in range(args.ppo_epochs):
            order = perm if epoch == 0 else torch.randperm(local_batch, generator=data_rng).to(device)
            for minibatch, idx in enumerate(order.split(local_minibatch)):
                lr_scale = min(1.0, (grad_step + 1) / max(1, args.warmup))
                common.set_lr(opt_pi, args.lr * lr_scale)
                common.set_lr(opt_v, args.value_lr * lr_scale)
                mb_mask = mask[idx]
                ids, attn = rollouts["ids"][idx], rollouts["attn"][idx]
                logp, logits = forward_response(policy, ids, attn, T0, device, dtype)
                pg_loss, clip_stats = policy_loss(logp, rollouts["old_logp"][idx], rollouts["advantages"][idx],
                                                  mb_mask, args.clip)
                values = forward_values(value_model, ids, attn, T0, device, dtype)
                vf_loss = value_loss(values, rollouts["old_values"][idx], rollouts["returns"][idx], mb_mask,
                                     args.value_clip)
                loss = pg_loss + args.vf_coef * vf_loss
                common.check_finite(loss, grad_step, f"PPO loss (iteration {it}, epoch {epoch}, minibatch {minibatch})")
                opt_pi.zero_grad(set_to_none=True)
                opt_v.zero_grad(set_to_none=True)
                loss.backward()
                distributed.all_reduce_grads(policy, average=True)  # DDP: the mean of the ranks' gradients
                distributed.all_reduce_grads(value_model, average=True)
                max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
                torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
                torch.nn.utils.clip_grad_norm_(value_model.parameters(), max_norm)
                opt_pi.step()
                opt_v.step()
                grad_step += 1
                with torch.no_grad():
                    probs = F.softmax(logits, dim=-1)
                    entropy = masked_mean(-(probs * F.log_softmax(logits, dim=-1)).sum(-1), mb_mask)
                losses = {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "entropy": entropy.item()}
                minibatch_stats.append({k: v.item() for k, v in clip_stats.items()} | losses)
        # ---- TRAINING SECTION END; what follows only measures

        # ---- statistics of this iteration (means over valid tokens / responses only)
        seq_kl = (rollouts["kl"]).sum(dim=1)  # (B,) sequence KL estimate
        mean_kl = distributed.sum_all(seq_kl.mean().item()) / world  # DDP: every rank adapts beta alike
        kl_ctl.update(mean_kl, args.batch_size)

        def mean_of(key):
            return sum(s[key] for s in minibatch_stats) / len(minibatch_stats)

        metrics = {
            "rm_score": rollouts["rm_score"].mean().item(),
            "kl": mean_kl,
            "beta": kl_ctl.beta,
            "reward": (rollouts["rewards"] * mask).sum(dim=1).mean().item(),
            "entropy": mean_of("entropy"),
            "clipfrac": mean_of("clipfrac"),
            "approx_kl": mean_of("approx_kl"),
            "ratio_mean": mean_of("ratio_mean"),
            "ratio_max": max(s["ratio_max"] for s in minibatch_stats),
            "vf_loss": mean_of("vf_loss"),
            "explained_var": explained_variance(rollouts["old_values"], rollouts["returns"], mask),
            "length": mask.sum(dim=1).mean().item(),
            "eos_frac": rollouts["has_eos"].float().mean().item(),
        }
        if judge is not None:
            texts = response_texts(rollouts["new"], mask, tok)
            gold = [judge(strip_template(p), y).score for p, y in zip(batch_prompts, texts)]
            metrics["gold_score"] = sum(gold) / len(texts)
        metrics["rollout_s"] = t_roll
        metrics["iter_s"] = common.seconds_since(t0, device)
        metrics = distributed.mean_metrics(metrics)  # DDP: the mean over ranks' rollouts
        log.log(it, **metrics)
        saver.step_done(it + 1)

    print(f"peak memory {common.peak_memory_mb(device):.0f} MB")
    distributed.cleanup()  # DDP: training is over; rank 0 alone evaluates and saves
    if not distributed.is_main():
        return
    policy.eval()
    final = {"iterations": args.iterations, "beta": kl_ctl.beta}
    if sample_prompts and not args.skip_eval:  # real data: SFT and PPO side by side, each answer with its reward
        from minipost import evaluate

        rows = evaluate.side_by_side({"sft": ref, "ppo": policy}, tok, sample_prompts,
                                     max_new_tokens=args.max_new_tokens, device=device, dtype=dtype, rm=rm)
        for name in ("sft", "ppo"):
            final[f"heldout_reward_{name}"] = sum(r[f"{name}_reward"] for r in rows) / len(rows)
        evaluate.write_side_by_side(args.out, rows, f"{len(rows)} held-out prompts: SFT vs PPO (greedy), "
                                                    f"with the reward model's scores")
        print(f"mean reward on the held-out prompts: SFT {final['heldout_reward_sft']:+.3f}, "
              f"PPO {final['heldout_reward_ppo']:+.3f}")
    saver.save(args.iterations, final)
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/curves.png",
                    ["rm_score", "gold_score", "kl", "entropy", "clipfrac", "length"], "PPO (train_ppo.py)")
    print(f"wrote {args.out}")

    if not args.skip_eval and args.prompts == "world":
        from minipost import evaluate

        # the references' answers: stored by their own stages when they match, generated otherwise
        _, _, result = evaluate.evaluate_stage(
            policy, tok, world_seed=init_config.get("world_seed", 0), sft=ref, sft_dir=args.init, base_dir=args.base,
            device=device, dtype=dtype, seed=args.seed, limit=args.eval_limit, title="PPO")
        evaluate.write_eval(args.out, result)
        saver.save(args.iterations, {**final, **result["metrics"]})  # the same weights, with their evaluation


if __name__ == "__main__":
    errors.run(main)
