"""
Stage 4 — Direct Preference Optimization (DPO): preference training without a reward model or RL.
Teaches: the RLHF objective's closed-form optimum turns preference learning into a classification loss on log-ratios.

Rafailov et al. 2023 show that the KL-regularized RLHF objective max E[r] - beta * KL(pi || pi_ref) has a
closed-form optimum pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta). Solving for r gives an IMPLICIT reward

    r_hat(x, y) = beta * log( pi(y|x) / pi_ref(y|x) )     (+ a term in x alone, which cancels in pairs)

and putting it into the Bradley-Terry likelihood gives the DPO loss (paper eq. 7), mean over pairs:

    h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]
    L_DPO = - log sigma(beta * h)

Variants (`--loss`), all functions of h below:
  sigmoid  DPO; with `--label-smoothing eps` the conservative DPO of Mitchell 2023 (labels flipped with
           probability eps): -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
  ipo      Azar et al. 2023 (IPO), a squared loss that does not push h to infinity: (h - 1/(2 beta))^2
  hinge    the SLiC-style hinge: max(0, 1 - beta h)
`--rpo-alpha a` adds a * (-log pi(y_c|x) / |y_c|), the chosen response's NLL per token (RPO, Pang et al.
2024). The DPO loss sees only the margin h, and it can grow while probability moves from the chosen AND
rejected responses to similar, unseen ones -- even ones like the rejected ("likelihood displacement",
Razin et al. 2024). The NLL term keeps the chosen responses likely.

log pi(y|x) (minipost/model.py: sequence_logprob) is a SUM over response tokens (incl. EOS) in fp32; prompt and padding are excluded, and
the same function serves chosen, rejected, policy and reference. At step 0 the policy IS the reference,
so h = 0 and the loss is exactly ln 2 (checked and printed). Dropout is off: with dropout the policy
would differ from its own reference.

Online DPO (`--online`, Guo et al. 2024): offline DPO trains on pairs sampled once, from SFT or other
models; online DPO samples two answers per prompt from the CURRENT policy at every step, lets a labeler
(`--labeler rm`: the reward model in --rm; `--labeler judge`: the toy world's gold judge) pick chosen and
rejected (ties skipped), and takes one DPO step on those pairs -- same loss, same frozen SFT reference. Why:
DPO's loss sees only the margin h, so on a fixed set of pairs it can widen h by moving probability off
BOTH answers onto text that no pair contains (likelihood displacement); nothing then checks that text. On
policy, what the model now says is what gets sampled and labelled next, so a drift toward worse answers is
pushed back at the next step -- the property PPO gets from its rollouts, without a value model.

Simplifications: the IPO loss uses summed (not length-averaged) log-probs, like the DPO loss; reference
log-probs are computed once before training (`--ref-logps precompute`, the default) or on the fly.

Run it:
    python train_dpo.py                                  # toy world, from checkpoints/sft, ~2 minutes on a 2-core CPU
    python train_dpo.py --beta-sweep 0.03,0.1,0.3,1      # the reward-vs-KL frontier (short runs per beta)
    python train_dpo.py --steps 3 --skip-eval --out /tmp/dpo   # smoke run
    python train_dpo.py --online --labeler rm --rm checkpoints/rm --out checkpoints/dpo-online   # online DPO
    python train_dpo.py --init checkpoints/sft --data hh-rlhf --block-size 512 --lr 5e-7 --beta 0.1 --steps 2000   # GPU
    torchrun --nproc_per_node 8 train_dpo.py ...   # several GPUs; --lora-rank 8: ref = adapters off (docs/scale.md)
"""

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minipost import checkpoint as ckpt
from minipost import common, data, distributed, errors, evaluate, generation, lora
from minipost.model import sequence_logprob  # log pi(y|x): the EOS counts, prompt and padding do not

# -----------------------------------------------------------------------------
# Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="checkpoints/sft", help="the SFT checkpoint: initial policy AND frozen reference")
    p.add_argument("--base", default="checkpoints/base", help="base checkpoint for win_rate_vs_base (empty = skip)")
    p.add_argument("--data", default="world",
                   help="world | hh-rlhf | PATH (.jsonl / .jsonl.gz with prompt, chosen, rejected)")
    evaluate.add_policy_pair_args(p, "the SFT model's")
    p.add_argument("--loss", default="sigmoid", choices=["sigmoid", "ipo", "hinge"], help="DPO, IPO or hinge loss")
    p.add_argument("--beta", type=common.positive_float, default=0.3,
                   help="strength of the implicit KL constraint: higher stays closer to SFT (why 0.3: docs/notes.md)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="conservative DPO: assumed label-flip rate in [0, 0.5)")
    p.add_argument("--rpo-alpha", type=common.nonneg_float, default=0.0,
                   help="weight of the chosen responses' NLL per token added to the loss (RPO); 0 = plain DPO")
    p.add_argument("--ref-logps", default="precompute", choices=["precompute", "online"],
                   help="reference log-probs cached once, or recomputed per batch")
    p.add_argument("--steps", type=common.positive_int, default=60,
                   help="optimizer steps (about one pass over the pairs: longer runs overfit them and drift from SFT)")
    p.add_argument("--batch-size", type=common.positive_int, default=32, help="preference pairs per step")
    p.add_argument("--micro-batch-size", type=common.nonneg_int, default=0,
                   help="pairs per forward/backward pass (gradients accumulate to --batch-size; memory grows with "
                        "it: 2 sequences a pair); 0 = the whole batch at once")
    p.add_argument("--block-size", type=common.auto_int, default=-1,
                   help="max tokens per sequence; -1 = the model's context")
    p.add_argument("--lr", type=common.positive_float, default=2e-5, help="peak learning rate")
    p.add_argument("--warmup", type=common.nonneg_int, default=10, help="linear warmup steps")
    p.add_argument("--min-lr-ratio", type=common.unit_float, default=0.1, help="cosine decays to this fraction of --lr")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--holdout", type=common.fraction_float, default=0.05,
                   help="held-out fraction for datasets without a held-out split")
    p.add_argument("--eval-every", type=common.positive_int, default=50, help="held-out pair accuracy every N steps")
    p.add_argument("--eval-pairs", type=common.nonneg_int, default=256,
                   help="held-out pairs scored every --eval-every steps (a fixed subset, so the periodic check "
                        "stays cheap on a large held-out split); the final accuracy uses them all; 0 = all")
    p.add_argument("--samples", type=common.nonneg_int, default=8,
                   help="real data: held-out prompts answered by SFT and DPO side by side at the end (printed and "
                        "written to samples.jsonl)")
    p.add_argument("--online", action="store_true",
                   help="online DPO: every step samples two answers per prompt from the CURRENT policy, --labeler "
                        "picks chosen / rejected, one DPO step on them (no offline pairs are trained on)")
    p.add_argument("--labeler", default="rm", choices=["rm", "judge"],
                   help="online DPO's labeler: rm = the reward model in --rm (RLHF's proxy); judge = the toy world's "
                        "gold judge (a perfect labeler; --data world only)")
    p.add_argument("--rm", default="checkpoints/rm", help="online DPO with --labeler rm: the reward model checkpoint")
    p.add_argument("--beta-sweep", default="",
                   help="comma-separated betas: short runs recording gold score and KL to SFT (sweep.json)")
    p.add_argument("--sweep-steps", type=common.positive_int, default=60, help="steps of each sweep run")
    p.add_argument("--skip-eval", action="store_true", help="skip the final judge evaluation (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0,
                   help="evaluate on this many held-out prompts; 0 = all")
    common.add_lora_args(p)
    common.add_common_args(p, out_dir="checkpoints/dpo", save_every=200)
    args = p.parse_args(argv)
    evaluate.check_policy_pair_args(p, args)
    if not 0 <= args.label_smoothing < 0.5:
        p.error(f"--label-smoothing must be in [0, 0.5), got {args.label_smoothing}")
    if args.online and args.labeler == "judge" and args.data != "world":
        p.error("--labeler judge needs the toy world's judge: --data world")
    if args.online and args.beta_sweep:
        p.error("--beta-sweep runs offline DPO; drop it with --online")
    try:
        args.sweep = [common.positive_float(b) for b in args.beta_sweep.split(",") if b.strip()]
    except (argparse.ArgumentTypeError, ValueError) as e:  # float('abc') raises ValueError
        p.error(f"--beta-sweep: {e}")
    return args


# -----------------------------------------------------------------------------
# The losses: plain functions of the four sequence log-probs


def dpo_logits(pol_c, pol_r, ref_c, ref_r) -> torch.Tensor:
    """h = (log pi_c - log ref_c) - (log pi_r - log ref_r), per pair (B,)."""
    # EXERCISE dpo_loss: h, the difference of the two log-ratios, then the (label-smoothed) DPO loss per pair
    return (pol_c - ref_c) - (pol_r - ref_r)
    # END EXERCISE dpo_loss


def dpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair DPO loss (B,): -(1-eps) log sigma(beta h) - eps log sigma(-beta h). Reduce with .mean()."""
    # EXERCISE dpo_loss: h, the difference of the two log-ratios, then the (label-smoothed) DPO loss per pair
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    # END EXERCISE dpo_loss


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair IPO loss (B,): (h - 1/(2 beta))^2, with tau = beta. Its minimum is a FINITE margin."""
    # EXERCISE ipo_loss: IPO: regress h to a finite target
    return (h - 1 / (2 * beta)) ** 2
    # END EXERCISE ipo_loss


def hinge_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair hinge loss (B,): max(0, 1 - beta h)."""
    return torch.relu(1 - beta * h)


def chosen_nll(pol_c: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Per-pair NLL per token of the chosen response (B,): -log pi(y_c|x) / |y_c|, EOS included."""
    return -pol_c / n_tokens


def preference_loss(h, kind: str, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    if kind == "sigmoid":
        return dpo_loss(h, beta, label_smoothing)
    if kind == "ipo":
        return ipo_loss(h, beta)
    if kind == "hinge":
        return hinge_loss(h, beta)
    raise ValueError(f"unknown loss {kind!r}")


def pair_logps(model, pairs: list[data.EncodedPair], eos_id, device, dtype):
    """(log pi(y_c|x) (B,), log pi(y_r|x) (B,)) in fp32, sequences batched by length (data.per_pair)."""
    with common.autocast(device, dtype):
        return data.per_pair(lambda batch: sequence_logprob(model, batch), pairs, eos_id, device)


@torch.no_grad()
def reference_logps(ref, pairs, eos_id, device, dtype, batch_size=64) -> torch.Tensor:
    """(N, 2): reference log-probs of every pair's chosen and rejected, computed once."""
    out = []
    for i in range(0, len(pairs), batch_size):
        c, r = pair_logps(ref, pairs[i : i + batch_size], eos_id, device, dtype)
        out.append(torch.stack([c, r], dim=1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def heldout_accuracy(policy, val: list[data.EncodedPair], val_ref_logps: torch.Tensor, eos_id, device, dtype) -> float:
    """Share of held-out pairs whose implicit reward prefers the chosen response (h > 0).
    val_ref_logps (N, 2): the reference's log-probs of each pair's (chosen, rejected)."""
    policy.eval()

    def margins(start, chunk):
        pol_c, pol_r = pair_logps(policy, chunk, eos_id, device, dtype)
        ref_lp = val_ref_logps[start : start + len(chunk)].to(device)  # (b, 2)
        return dpo_logits(pol_c, pol_r, ref_lp[:, 0], ref_lp[:, 1])

    return common.pair_accuracy(margins, val)


# -----------------------------------------------------------------------------
# One training run (the main run and each beta of a sweep)


@dataclass
class PairSet:
    """The encoded pairs and their reference log-probs (N, 2) = (chosen, rejected), computed once."""
    train: list[data.EncodedPair]
    train_ref_logps: torch.Tensor | None  # None with --ref-logps online
    val: list[data.EncodedPair]
    val_ref_logps: torch.Tensor
    check: list[int]  # the held-out pairs (indices into val) scored during training: data.fixed_subset


def chunk_backward(policy, ref, batch: list[data.EncodedPair], share: float, args, beta: float, step: int, eos_id,
                   device, dtype, ref_logps=None):
    """One micro-batch of pairs: the DPO loss (+ RPO's NLL), times the chunk's `share` of the batch so that
    accumulated chunks give exactly the batch mean's gradient, then backward. ref_logps (b, 2): cached
    reference log-probs, else the reference runs here. Returns the weighted loss and (4, b) log-probs."""
    pol_c, pol_r = pair_logps(policy, batch, eos_id, device, dtype)  # (b,), (b,)
    if ref_logps is not None:
        ref_c, ref_r = ref_logps[:, 0].to(device), ref_logps[:, 1].to(device)
    else:
        with torch.no_grad():
            ref_c, ref_r = pair_logps(ref, batch, eos_id, device, dtype)
    h = dpo_logits(pol_c, pol_r, ref_c, ref_r)  # (b,)
    chunk_loss = preference_loss(h, args.loss, beta, args.label_smoothing).mean()
    if args.rpo_alpha > 0:
        n_chosen = torch.tensor([len(p.chosen) - p.n_prompt for p in batch], dtype=torch.float32,
                                device=pol_c.device)  # (b,) response tokens incl. EOS
        chunk_loss = chunk_loss + args.rpo_alpha * chosen_nll(pol_c, n_chosen).mean()
    chunk_loss = chunk_loss * share
    common.check_finite(chunk_loss, step)
    chunk_loss.backward()
    return chunk_loss.detach(), torch.stack([pol_c, pol_r, ref_c, ref_r]).detach()  # (4, b)


def train(policy, ref, pairs: PairSet, tok, args, *, beta: float, steps: int, device, dtype, save=None):
    """DPO steps on `policy`; returns (the last step's metrics, the run's Checkpointer). The main run saves
    (save(metrics, train_state)) every --save-every steps, logs and resumes; the sweep's runs (save=None) don't."""
    optimizer = common.make_optimizer(policy, args.lr, weight_decay=0.0)
    data_rng = generation.index_generator(args.seed)
    saver = common.Checkpointer(args, steps, policy, save, optimizer=optimizer, data_rng=data_rng)
    start = saver.start()
    log = saver.logger(steps)
    micro = args.micro_batch_size or args.batch_size
    policy.train()  # dropout is off (load_model), so train mode changes nothing in the forward pass
    metrics = {}  # stays empty when --resume finds the run already at its last step
    for step in range(start, steps):
        t0 = time.time()
        lr = common.lr_at(step, steps, args.lr, args.warmup, args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        picks = torch.randint(0, len(pairs.train), (args.batch_size,), generator=data_rng)
        picks = distributed.shard(picks)  # DDP: this rank's slice of the global batch (all of it in one process)
        # ---- TRAINING STEP BEGIN
        # Micro-batches: each chunk's mean loss is weighted by its share of the batch, so the accumulated
        # gradient is exactly that of the batch's mean loss, and memory holds one chunk's graph at a time.
        optimizer.zero_grad(set_to_none=True)
        loss, logps = 0.0, []
        for chunk_picks in picks.split(micro):
            batch = [pairs.train[i] for i in chunk_picks.tolist()]
            cached = pairs.train_ref_logps[chunk_picks] if pairs.train_ref_logps is not None else None  # (b, 2)
            # its share of the GLOBAL batch's mean
            chunk_loss, chunk_logps = chunk_backward(policy, ref, batch, len(batch) / args.batch_size, args, beta,
                                                     step, tok.eos_id, device, dtype, ref_logps=cached)
            loss += chunk_loss
            logps.append(chunk_logps)  # (4, b)
        pol_c, pol_r, ref_c, ref_r = torch.cat(logps, dim=1)  # (B,) each, for the metrics below
        distributed.all_reduce_grads(policy, average=False)  # DDP: the shares add up to the global batch's gradient
        max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
        optimizer.step()
        # ---- TRAINING STEP END; what follows only measures
        # Implicit rewards. Both log pi(chosen) and log pi(rejected) usually FALL while the margin grows:
        # the loss only sees their difference, and the cheapest way to widen it on a small model is to
        # push probability mass away from both, most from the rejected one (Pal et al. 2024, "Smaug").
        reward_chosen, reward_rejected = beta * (pol_c - ref_c).detach(), beta * (pol_r - ref_r).detach()
        metrics = {
            "loss": loss.item(), "rewards/chosen": reward_chosen.mean().item(),
            "rewards/rejected": reward_rejected.mean().item(),
            "rewards/margin": (reward_chosen - reward_rejected).mean().item(),
            "rewards/accuracy": (reward_chosen > reward_rejected).float().mean().item(),
            "logps/chosen": pol_c.mean().item(), "logps/rejected": pol_r.mean().item(), "lr": lr,
            "grad_norm": grad_norm.item(), "ms": common.seconds_since(t0, device) * 1000,
        }
        metrics = distributed.mean_metrics(metrics)  # DDP: the mean over ranks (loss: their sum = the batch's)
        metrics["loss"] *= distributed.world_size()
        if pairs.val and ((step + 1) % args.eval_every == 0 or step == steps - 1) and distributed.is_main():
            check = [pairs.val[i] for i in pairs.check]
            metrics["val_accuracy"] = heldout_accuracy(policy, check, pairs.val_ref_logps[pairs.check], tok.eos_id,
                                                       device, dtype)
            policy.train()
        if log is not None:
            log.log(step, **metrics)
        saver.step_done(step + 1)
    policy.eval()
    return metrics, saver


@torch.no_grad()
def check_step0(policy, ref, pairs: PairSet, tok, args, device, dtype):
    """Before training the policy IS the reference: h = 0, and the sigmoid loss is exactly ln 2
    (docs/pitfalls.md, pitfall 6). Checked on the first training batch, against the reference run on this
    very batch; also printed: how far the cached reference log-probs are from these (bf16 matmuls round
    batches of other shapes differently)."""
    picks = torch.randint(0, len(pairs.train), (args.batch_size,), generator=generation.index_generator(args.seed))
    batch = [pairs.train[i] for i in picks.tolist()]  # the batch train() starts with
    pol_c, pol_r = pair_logps(policy, batch, tok.eos_id, device, dtype)
    ref_c, ref_r = pair_logps(ref, batch, tok.eos_id, device, dtype)
    h0 = dpo_logits(pol_c, pol_r, ref_c, ref_r)
    loss0 = preference_loss(h0, args.loss, args.beta, args.label_smoothing).mean()
    line = f"check: step-0 |h| max {h0.abs().max().item():.2e}; loss {loss0.item():.6f}"
    if args.loss == "sigmoid":
        line += f" (ln 2 = {math.log(2):.6f})"
    if pairs.train_ref_logps is not None:
        cached = pairs.train_ref_logps[picks].to(device) - torch.stack([ref_c, ref_r], dim=1)
        line += f"; reference log-probs used for training within {cached.abs().max().item():.1e} of these"
    print(line)


# -----------------------------------------------------------------------------
# Online DPO: pairs sampled from the current policy, labelled as they are made


def make_labeler(kind: str, tok, *, rm=None, device="cpu", dtype=torch.float32):
    """A function (instructions, prompt ids, texts, token lists, ended) -> scores (N,) that ranks answers:
    the reward model's scalar (kind "rm": evaluate.rewards_of, EOS appended when the answer ended) or the
    toy world's gold judge (kind "judge"). Only the ORDER of two scores matters to DPO."""
    if kind == "rm":
        def label(instructions, prompt_ids, texts, toks, ended):
            return evaluate.rewards_of(rm, tok, prompt_ids, toks, ended, device, dtype).cpu()
    elif kind == "judge":
        from minipost.world import judge, strip_template

        def label(instructions, prompt_ids, texts, toks, ended):
            return torch.tensor([judge(strip_template(x), y).score for x, y in zip(instructions, texts)])
    else:
        raise ValueError(f"unknown labeler {kind!r}")
    return label


@torch.no_grad()
def sample_pairs(policy, tok, instructions: list[str], prompt_ids: list[list[int]], label, *, generator, device,
                 dtype, max_new_tokens=generation.MAX_NEW_TOKENS) -> tuple[list[data.EncodedPair], dict]:
    """Two answers per prompt from `policy` at temperature 1, ranked by `label`: (pairs, stats).

    The two samples of prompt i are drawn in one batch (prompts i and n + i). A tie (equal scores, which
    includes two identical answers) carries no preference and is skipped (stats["ties"]). Each sequence is
    prompt + answer (+ EOS when the answer ended), exactly the tokens the policy produced."""
    n = len(prompt_ids)
    texts, toks, ended = generation.generate_from_ids(policy, tok, prompt_ids + prompt_ids, device=device, dtype=dtype,
                                                    temperature=1.0, generator=generator,
                                                    max_new_tokens=max_new_tokens)
    scores = label(instructions + instructions, prompt_ids + prompt_ids, texts, toks, ended)  # (2n,)
    seq = [p + t + ([tok.eos_id] if e else []) for p, t, e in zip(prompt_ids + prompt_ids, toks, ended)]
    pairs, ties = [], 0
    for i in range(n):
        a, b = i, n + i  # the prompt's two samples
        if scores[a] == scores[b] or seq[a] == seq[b]:
            ties += 1
            continue
        c, r = (a, b) if scores[a] > scores[b] else (b, a)
        pairs.append(data.EncodedPair(chosen=seq[c], rejected=seq[r], n_prompt=len(prompt_ids[i]),
                                      margin=float(scores[c] - scores[r])))
    stats = {"pairs": len(pairs), "ties": ties, "label_mean": scores.float().mean().item()}
    return pairs, stats


def train_online(policy, ref, instructions: list[str], prompt_ids: list[list[int]], label, tok, args, *, beta: float,
                 steps: int, device, dtype, val=None, save=None):
    """Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback"): every step
    draws --batch-size prompts, samples two answers to each from the CURRENT policy pi_theta, lets the
    labeler pick chosen / rejected, and takes one DPO step on those pairs:

        y1, y2 ~ pi_theta(.|x);  (y_c, y_r) = labeler's order;  L = mean over pairs of -log sigma(beta h)
        h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]

    The reference stays the SFT model throughout, so the implicit KL anchor is the same as offline DPO's.
    Why: offline DPO trains on pairs sampled once from SFT (or from other models); as the policy moves,
    those pairs fall out of its distribution, and the loss can widen the margin by pushing mass off BOTH
    answers onto unseen text ("likelihood displacement", Razin et al. 2024). On-policy pairs are always
    what the policy says now, so any answer it has drifted to is sampled, scored and -- if worse --
    pushed down at the next step. This is what RLHF's PPO gets from its rollouts, at DPO's price
    (no value model, no advantages). At step 0 the policy is the reference: h = 0, the loss is ln 2.
    Returns (the last step's metrics, the run's Checkpointer); metrics of every step are logged."""
    optimizer = common.make_optimizer(policy, args.lr, weight_decay=0.0)
    data_rng = generation.index_generator(args.seed)  # which prompts
    sample_rng = generation.make_generator(device, args.seed + 1)  # the policy's samples
    saver = common.Checkpointer(args, steps, policy, save, optimizer=optimizer, data_rng=data_rng,
                                sample_rng=sample_rng)
    start = saver.start()
    log = saver.logger(steps)
    micro = args.micro_batch_size or args.batch_size
    metrics = {}
    for step in range(start, steps):
        t0 = time.time()
        lr = common.lr_at(step, steps, args.lr, args.warmup, args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        picks = torch.randint(0, len(prompt_ids), (args.batch_size,), generator=data_rng).tolist()
        # ---- the round's data: fresh samples of the policy as it is now
        pairs, stats = sample_pairs(policy, tok, [instructions[i] for i in picks], [prompt_ids[i] for i in picks],
                                    label, generator=sample_rng, device=device, dtype=dtype)
        policy.train()  # generation left it in eval mode (dropout is off: no difference in the forward pass)
        metrics = {"pairs": stats["pairs"], "ties": stats["ties"], "label_mean": stats["label_mean"], "lr": lr}
        if pairs:
            # ---- TRAINING STEP BEGIN: one DPO step on them, micro-batched like offline DPO (reference per batch)
            optimizer.zero_grad(set_to_none=True)
            loss, logps = 0.0, []
            for k in range(0, len(pairs), micro):
                batch = pairs[k : k + micro]
                chunk_loss, chunk_logps = chunk_backward(policy, ref, batch, len(batch) / len(pairs), args, beta,
                                                         step, tok.eos_id, device, dtype)
                loss += chunk_loss
                logps.append(chunk_logps)  # (4, b)
            pol_c, pol_r, ref_c, ref_r = torch.cat(logps, dim=1)  # (P,) each
            max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
            optimizer.step()
            # ---- TRAINING STEP END; what follows only measures
            reward_chosen, reward_rejected = beta * (pol_c - ref_c), beta * (pol_r - ref_r)
            metrics.update({
                "loss": loss.item(), "rewards/chosen": reward_chosen.mean().item(),
                "rewards/rejected": reward_rejected.mean().item(),
                "rewards/margin": (reward_chosen - reward_rejected).mean().item(),
                "rewards/accuracy": (reward_chosen > reward_rejected).float().mean().item(),
                "logps/chosen": pol_c.mean().item(), "logps/rejected": pol_r.mean().item(),
                "grad_norm": grad_norm.item()})
            if step == 0 and start == 0:
                print(f"check: step-0 |h| max {(pol_c - ref_c - pol_r + ref_r).abs().max().item():.2e}; "
                      f"loss {loss.item():.6f}" + (f" (ln 2 = {math.log(2):.6f})" if args.loss == "sigmoid" else ""))
        # else: every pair tied (a policy that answers every prompt the same way twice): nothing to learn
        metrics["ms"] = common.seconds_since(t0, device) * 1000
        if val and ((step + 1) % args.eval_every == 0 or step == steps - 1):
            check = [val.val[i] for i in val.check]
            metrics["val_accuracy"] = heldout_accuracy(policy, check, val.val_ref_logps[val.check], tok.eos_id,
                                                       device, dtype)
        if log is not None:
            log.log(step, **metrics)
        saver.step_done(step + 1)
    policy.eval()
    return metrics, saver


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(common.pick_device(args.device))  # torchrun: join the process group (else a no-op)
    args.fused_attn = common.attention_for(device, args.fused_attn)  # default: fused on CUDA only
    if args.online and distributed.world_size() > 1:  # its sampling loop is written for one process
        raise SystemExit("error: --online runs in one process; under torchrun use offline DPO")
    dtype, why = common.pick_dtype(device, args.dtype)
    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        policy, tok, init_config = common.load_model(args.init, device, fused_attn=args.fused_attn)
        data.check_world_seed(args.data, init_config, args.init)  # the toy world it was trained in
        # with LoRA the reference is the policy itself with its adapters off: no second copy of the weights
        ref = lora.ReferenceView(policy) if args.lora_rank > 0 else \
            common.load_model(args.init, device, fused_attn=args.fused_attn)[0]
        rm = None
        if args.online and args.labeler == "rm":
            rm, _, rm_config = common.load_model(args.rm, device, kind="scalar", fused_attn=args.fused_attn)
            if rm_config.get("kind") != "scalar":  # a language model: a random reward head
                raise ckpt.CheckpointError(f"--rm {args.rm} holds a language model, not a reward model (train_rm.py)")
            common.frozen(rm)
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    common.frozen(ref)  # the reference never changes: eval mode, no grads, not in the optimizer
    common.seed_everything(args.seed)
    common.setup_training(policy, args)  # --lora-rank: adapters only; --grad-checkpoint
    block_size, _ = common.stage_context(args.block_size, policy.config.block_size)
    common.print_config("train_dpo", args, {"device": device, "dtype": why, "block_size": block_size})

    # ---- data: the reward model's preference pairs. DPO assumes the pairs come from (near) the reference
    # policy, and the policy pairs are samples of the reference itself.
    # Online DPO trains on its own samples only: the offline pairs serve as the held-out check.
    pair_args = argparse.Namespace(**{**vars(args), "policy_pairs": 0}) if args.online else args
    train_enc, val_enc, data_stats = evaluate.load_preference_pairs(pair_args, tok, block_size, sampler=lambda: ref,
                                                                    sampler_dir=args.init, device=device, dtype=dtype)
    data_fingerprint = data.data_fingerprint(args.data)  # the sha256 of the files trained on, for the checkpoint
    t0 = time.time()
    precompute = args.ref_logps == "precompute" and not args.online
    pairs = PairSet(train=train_enc, val=val_enc,
                    train_ref_logps=reference_logps(ref, train_enc, tok.eos_id, device, dtype) if precompute else None,
                    val_ref_logps=reference_logps(ref, val_enc, tok.eos_id, device, dtype),
                    check=data.fixed_subset(list(range(len(val_enc))), args.eval_pairs))
    print(f"reference log-probs computed in {time.time() - t0:.1f}s")

    if args.online:  # the prompts that online DPO samples answers to, left-truncated to leave room for one
        try:
            rows, prompt_stats = data.load_prompts(args.data)
        except (data.DataError, OSError) as e:
            raise SystemExit(f"error: {e}")
        instructions = [r["prompt"] for r in rows]
        prompt_ids, _ = data.encode_prompts(tok, instructions, block_size - generation.MAX_NEW_TOKENS)
        label = make_labeler(args.labeler, tok, rm=rm, device=device, dtype=dtype)
        data_stats = {**data_stats, "online_prompts": len(prompt_ids), "labeler": args.labeler}
        print(f"online DPO: {len(prompt_ids)} prompts ({prompt_stats}), labeler {args.labeler}")

    # ---- train
    if not args.online:
        check_step0(policy, ref, pairs, tok, args, device, dtype)

    def save(metrics, train_state):
        common.save_stage(args.out, policy, stage="dpo", kind="lm", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state,
                          extra={"init": args.init, "world_seed": init_config.get("world_seed", 0),
                                 "data_stats": data_stats, "data": data_fingerprint})

    if args.online:
        last, saver = train_online(policy, ref, instructions, prompt_ids, label, tok, args, beta=args.beta,
                                   steps=args.steps, device=device, dtype=dtype, val=pairs, save=save)
    else:
        last, saver = train(policy, ref, pairs, tok, args, beta=args.beta, steps=args.steps, device=device,
                            dtype=dtype, save=save)
    print(f"peak memory {common.peak_memory_mb(device):.0f} MB")
    distributed.cleanup()  # DDP: training is over; rank 0 alone evaluates and saves
    if not distributed.is_main():
        return
    metrics = {"val_accuracy": last.get("val_accuracy"), "steps": args.steps, "beta": args.beta, "loss": args.loss,
               "online": args.online, "labeler": args.labeler if args.online else None}
    if val_enc and (len(pairs.check) < len(val_enc) or metrics["val_accuracy"] is None):
        # the periodic check saw a subset (or no step ran: resumed at the end): the final number uses every pair
        metrics["val_accuracy"] = heldout_accuracy(policy, val_enc, pairs.val_ref_logps, tok.eos_id, device, dtype)
    metrics["heldout_pairs"] = len(val_enc)
    if not args.skip_eval and args.data != "world" and args.samples and val_enc:
        # real data has no judge: SFT and DPO side by side on fixed held-out prompts
        held = data.fixed_subset(data.unique_prompts(val_enc), args.samples)
        rows = evaluate.side_by_side({"sft": ref, "dpo": policy}, tok, held, max_new_tokens=generation.MAX_NEW_TOKENS,
                                     device=device, dtype=dtype)
        evaluate.write_side_by_side(args.out, rows, f"{len(rows)} held-out prompts: SFT vs DPO (greedy)")
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/curves.png",
                    ["loss", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected", "val_accuracy"],
                    "DPO (train_dpo.py)")

    result = None
    if not args.skip_eval and args.data == "world":
        # the references' answers once (stored by their own stages when they match), reused by the sweep
        world, ref_results, result = evaluate.evaluate_stage(
            policy, tok, world_seed=init_config.get("world_seed", 0), sft=ref, sft_dir=args.init, base_dir=args.base,
            device=device, dtype=dtype, seed=args.seed, limit=args.eval_limit, title="DPO")
        metrics.update(result["metrics"])
    saver.save(args.steps, metrics)
    if result is not None:
        evaluate.write_eval(args.out, result)
    print(f"wrote {args.out}")

    # ---- the beta sweep: how far (KL) each beta moves from SFT, and what the gold judge thinks of it
    if args.sweep and result is not None:
        rows = []
        for beta in args.sweep:
            sweep_policy, _, _ = common.load_model(args.init, device, fused_attn=args.fused_attn)
            common.setup_training(sweep_policy, args)  # with LoRA, `ref` (adapters off) still is the SFT model
            last, _ = train(sweep_policy, ref, pairs, tok, args, beta=beta, steps=args.sweep_steps, device=device,
                            dtype=dtype)
            m = evaluate.evaluate_model(sweep_policy, tok, world, device=device, dtype=dtype, refs={"sft": ref},
                                        ref_results=ref_results, seed=args.seed, limit=args.eval_limit)["metrics"]
            rows.append({"beta": beta, "gold_score": m["gold_score"], "gold_score_sampled": m["gold_score_sampled"],
                         "kl_to_sft": m["kl_to_sft"], "win_rate_vs_sft": m["win_rate_vs_sft"],
                         "val_accuracy": last.get("val_accuracy")})
            print(f"sweep beta {beta:g}: gold {m['gold_score']:.3f} (samples {m['gold_score_sampled']:.3f}), "
                  f"KL to SFT {m['kl_to_sft']:.2f}, win vs SFT {m['win_rate_vs_sft']:.3f}")
        ckpt.atomic_write_json(f"{args.out}/sweep.json", rows)
    elif args.sweep:
        print("--beta-sweep skipped: it needs the toy world's judge (--data world) and the evaluation (no --skip-eval)")


if __name__ == "__main__":
    errors.run(main)
