"""
Stage 4 — Direct Preference Optimization (DPO): preference training without a reward model or RL.

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

log pi(y|x) is a SUM over response tokens (incl. EOS) in fp32; prompt and padding are excluded, and
the same function serves chosen, rejected, policy and reference. At step 0 the policy IS the reference,
so h = 0 and the loss is exactly ln 2 (checked and printed). Dropout is off: with dropout the policy
would differ from its own reference.

Simplifications: the IPO loss uses summed (not length-averaged) log-probs, like the DPO loss; reference
log-probs are computed once before training (`--ref-logps precompute`, the default) or on the fly.

Run it:
    python train_dpo.py                                  # toy world, from checkpoints/sft, ~2 minutes on a 2-core CPU
    python train_dpo.py --beta-sweep 0.03,0.1,0.3,1      # the reward-vs-KL frontier (short runs per beta)
    python train_dpo.py --steps 3 --skip-eval --out /tmp/dpo   # smoke run
    python train_dpo.py --init checkpoints/sft --data hh-rlhf --block-size 512 --lr 5e-7 --beta 0.1 --steps 2000   # GPU
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from minipost import checkpoint as ckpt
from minipost import common, data, errors

# -----------------------------------------------------------------------------
# Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="checkpoints/sft", help="the SFT checkpoint: initial policy AND frozen reference")
    p.add_argument("--base", default="checkpoints/base", help="base checkpoint for win_rate_vs_base (empty = skip)")
    p.add_argument("--data", default="world", help="world | hh-rlhf | PATH (.jsonl / .jsonl.gz with prompt, chosen, rejected)")
    p.add_argument("--policy-pairs", type=common.nonneg_int, default=800,
                   help="toy world: add judge-labelled pairs of the SFT model's own samples on this many training prompts, "
                        "the same pairs train_rm.py adds with the same --policy-samples, seed and noise (0 = off)")
    p.add_argument("--policy-samples", type=common.positive_int, default=2,
                   help="samples per prompt for those pairs (>= 2); every untied pair of them is a comparison, K(K-1)/2 "
                        "per prompt, shuffled like any pair (InstructGPT ranked K = 4-9 but kept a prompt's pairs in one "
                        "batch element: shuffled, they overfit)")
    p.add_argument("--label-noise", type=common.unit_float, default=0.1, help="label-flip rate of those policy pairs")
    p.add_argument("--loss", default="sigmoid", choices=["sigmoid", "ipo", "hinge"], help="DPO, IPO or hinge loss")
    p.add_argument("--beta", type=common.positive_float, default=0.3,
                   help="strength of the implicit KL constraint (the paper's 0.1 drifted 4x further from SFT here, for no gain)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO: assumed label-flip rate in [0, 0.5)")
    p.add_argument("--rpo-alpha", type=common.nonneg_float, default=0.0,
                   help="weight of the chosen responses' NLL per token added to the loss (RPO); 0 = plain DPO")
    p.add_argument("--ref-logps", default="precompute", choices=["precompute", "online"], help="reference log-probs cached once, or recomputed per batch")
    p.add_argument("--steps", type=common.positive_int, default=60,
                   help="optimizer steps (about one pass over the pairs: longer runs overfit them and drift from SFT)")
    p.add_argument("--batch-size", type=common.positive_int, default=32, help="preference pairs per step")
    p.add_argument("--block-size", type=int, default=-1, help="max tokens per sequence; -1 = the model's context")
    p.add_argument("--lr", type=common.positive_float, default=2e-5, help="peak learning rate")
    p.add_argument("--warmup", type=common.nonneg_int, default=10, help="linear warmup steps")
    p.add_argument("--min-lr-ratio", type=common.unit_float, default=0.1, help="cosine decays to this fraction of --lr")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--holdout", type=common.unit_float, default=0.05, help="held-out fraction for datasets without a held-out split")
    p.add_argument("--eval-every", type=common.positive_int, default=50, help="held-out pair accuracy every N steps")
    p.add_argument("--beta-sweep", default="", help="comma-separated betas: short runs recording gold score and KL to SFT (sweep.json)")
    p.add_argument("--sweep-steps", type=common.positive_int, default=60, help="steps of each sweep run")
    p.add_argument("--skip-eval", action="store_true", help="skip the final judge evaluation (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0, help="evaluate on this many held-out prompts; 0 = all")
    common.add_common_args(p, out_dir="checkpoints/dpo", save_every=200)
    args = p.parse_args(argv)
    if args.policy_samples < 2:
        p.error(f"--policy-samples must be >= 2 (a pair needs two samples), got {args.policy_samples}")
    if not 0 <= args.label_smoothing < 0.5:
        p.error(f"--label-smoothing must be in [0, 0.5), got {args.label_smoothing}")
    try:
        args.sweep = [common.positive_float(b) for b in args.beta_sweep.split(",") if b.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(f"--beta-sweep: {e}")
    return args


# -----------------------------------------------------------------------------
# The losses: plain functions of the four sequence log-probs


def dpo_logits(pol_c, pol_r, ref_c, ref_r) -> torch.Tensor:
    """h = (log pi_c - log ref_c) - (log pi_r - log ref_r), per pair (B,)."""
    return (pol_c - ref_c) - (pol_r - ref_r)


def dpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair DPO loss (B,): -(1-eps) log sigma(beta h) - eps log sigma(-beta h). Reduce with .mean()."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair IPO loss (B,): (h - 1/(2 beta))^2, with tau = beta. Its minimum is a FINITE margin."""
    return (h - 1 / (2 * beta)) ** 2


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


def pair_logps(model, pairs, eos_id, device, dtype):
    """Summed response log-probs (fp32) of chosen and rejected: ((B,), (B,)). The 2B sequences are run in
    length-sorted groups (less padding), the results put back in order."""
    seqs = [(c, n) for c, _, n, _ in pairs] + [(r, n) for _, r, n, _ in pairs]
    with common.autocast(device, dtype):
        logps = common.per_sequence(lambda batch: common.response_logprobs(model, batch), seqs, eos_id, device)  # (2B,)
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def reference_logps(ref, pairs, eos_id, device, dtype, batch_size=64) -> torch.Tensor:
    """(N, 2): reference log-probs of every pair's chosen and rejected, computed once."""
    out = []
    for i in range(0, len(pairs), batch_size):
        c, r = pair_logps(ref, pairs[i : i + batch_size], eos_id, device, dtype)
        out.append(torch.stack([c, r], dim=1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def heldout_accuracy(policy, ref_lp, pairs, eos_id, device, dtype, batch_size=64) -> float:
    """Share of held-out pairs whose implicit reward prefers the chosen response (h > 0)."""
    policy.eval()
    right = 0
    for i in range(0, len(pairs), batch_size):
        c, r = pair_logps(policy, pairs[i : i + batch_size], eos_id, device, dtype)
        rl = ref_lp[i : i + batch_size].to(device)
        right += int((dpo_logits(c, r, rl[:, 0], rl[:, 1]) > 0).sum())
    return right / max(len(pairs), 1)


# -----------------------------------------------------------------------------
# One training run (the main run and each beta of a sweep)


def train(policy, ref, train_enc, ref_lp, val_enc, val_ref_lp, tok, args, beta, steps, device, dtype, save=None):
    """DPO steps on `policy`; returns (the last step's metrics, the run's Checkpointer). The main run saves
    (save(metrics, train_state)) every --save-every steps and resumes; the sweep's runs (save=None) do neither."""
    optimizer = common.make_optimizer(policy, args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    saver = common.Checkpointer(args, steps, policy, save, optimizer=optimizer, data_rng=gen)
    start = saver.start()
    log = saver.logger(steps)
    policy.train()  # dropout is off (load_model), so train mode changes nothing in the forward pass
    for step in range(start, steps):
        t0 = time.time()
        lr = common.lr_at(step, steps, args.lr, args.warmup, args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        picks = torch.randint(0, len(train_enc), (args.batch_size,), generator=gen)
        pairs = [train_enc[i] for i in picks.tolist()]
        pol_c, pol_r = pair_logps(policy, pairs, tok.eos_id, device, dtype)  # (B,), (B,)
        if args.ref_logps == "precompute":
            ref_c, ref_r = ref_lp[picks, 0].to(device), ref_lp[picks, 1].to(device)
        else:
            with torch.no_grad():
                ref_c, ref_r = pair_logps(ref, pairs, tok.eos_id, device, dtype)
        h = dpo_logits(pol_c, pol_r, ref_c, ref_r)  # (B,)
        loss = preference_loss(h, args.loss, beta, args.label_smoothing).mean()
        if args.rpo_alpha > 0:
            n_c = torch.tensor([len(c) - n for c, _, n, _ in pairs], dtype=torch.float32, device=pol_c.device)  # (B,)
            loss = loss + args.rpo_alpha * chosen_nll(pol_c, n_c).mean()
        if step == 0:
            # The policy is the reference: h = 0, so the sigmoid loss is ln 2 (pitfall 6 of REFERENCE.md).
            # Checked against the reference on this very batch; the precomputed values came from batches of
            # other shapes, which bf16 matmuls round differently (printed; 5e-7 to 2e-4 nats in runs here).
            with torch.no_grad():
                same_c, same_r = pair_logps(ref, pairs, tok.eos_id, device, dtype)
                h0 = dpo_logits(pol_c.detach(), pol_r.detach(), same_c, same_r)
                loss0 = preference_loss(h0, args.loss, beta, args.label_smoothing).mean()
                cached = torch.cat([ref_c - same_c, ref_r - same_r]).abs().max().item()
            print(f"check: step-0 |h| max {h0.abs().max().item():.2e}; loss {loss0.item():.6f}"
                  + (f" (ln 2 = {math.log(2):.6f})" if args.loss == "sigmoid" else "")
                  + f"; reference log-probs used for training within {cached:.1e} of these")
        common.check_finite(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        optimizer.step()
        # Implicit rewards. Both log pi(chosen) and log pi(rejected) usually FALL while the margin grows:
        # the loss only sees their difference, and the cheapest way to widen it on a small model is to
        # push probability mass away from both, most from the rejected one (Pal et al. 2024, "Smaug").
        rc, rr = beta * (pol_c - ref_c).detach(), beta * (pol_r - ref_r).detach()
        metrics = {
            "loss": loss.item(), "rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
            "rewards/margin": (rc - rr).mean().item(), "rewards/accuracy": (rc > rr).float().mean().item(),
            "logps/chosen": pol_c.mean().item(), "logps/rejected": pol_r.mean().item(), "lr": lr,
            "grad_norm": grad_norm.item(), "ms": (time.time() - t0) * 1000,
        }
        if val_enc and ((step + 1) % args.eval_every == 0 or step == steps - 1):
            metrics["val_accuracy"] = heldout_accuracy(policy, val_ref_lp, val_enc, tok.eos_id, device, dtype)
            policy.train()
        if log is not None:
            log.log(step, **metrics)
        saver.step_done(step + 1)
    policy.eval()
    return metrics, saver


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    dtype, why = common.pick_dtype(device, args.dtype)
    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        policy, tok, init_config = common.load_model(args.init, device)
        ref, _, _ = common.load_model(args.init, device)
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    common.frozen(ref)  # the reference never changes: eval mode, no grads, not in the optimizer
    common.seed_everything(args.seed)
    block_size, _ = common.stage_context(args.block_size, policy.config.block_size)
    common.print_config("train_dpo", args, {"device": device, "dtype": why, "block_size": block_size})

    # ---- data
    try:
        pairs, val_pairs, read_stats = data.load_pair_splits(args.data, args.holdout)
    except (data.DataError, OSError) as e:
        raise SystemExit(f"error: {e}")
    if args.data == "world" and args.policy_pairs:
        # the reward model's preference data: offline pairs + judge-labelled pairs of SFT samples (same seed,
        # same pairs). DPO assumes the pairs come from (near) the reference policy, and these do.
        from minipost import evaluate

        t0 = time.time()
        extra, extra_stats = evaluate.policy_pairs(ref, tok, args.policy_pairs, label_noise=args.label_noise,
                                                   seed=args.seed, device=device, dtype=dtype, cache_dir=args.init,
                                                   samples=args.policy_samples)
        pairs, read_stats = pairs + extra, {**read_stats, **extra_stats}
        print(f"policy pairs: {extra_stats} ({time.time() - t0:.1f}s)")
    train_enc, enc_stats = data.encode_pairs(tok, pairs, block_size)
    val_enc, _ = data.encode_pairs(tok, val_pairs, block_size)
    print(f"data: {len(train_enc)} train / {len(val_enc)} held-out pairs; read {read_stats}; encoded {enc_stats}")
    if not train_enc:
        raise SystemExit(f"error: no usable preference pairs in {args.data}")
    t0 = time.time()
    ref_lp = reference_logps(ref, train_enc, tok.eos_id, device, dtype) if args.ref_logps == "precompute" else None
    val_ref_lp = reference_logps(ref, val_enc, tok.eos_id, device, dtype)
    print(f"reference log-probs computed in {time.time() - t0:.1f}s")

    # ---- train
    def save(metrics, train_state):
        common.save_stage(args.out, policy, stage="dpo", kind="lm", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state, extra={"init": args.init, "world_seed": init_config.get("world_seed", 0)})

    last, saver = train(policy, ref, train_enc, ref_lp, val_enc, val_ref_lp, tok, args, args.beta, args.steps, device, dtype,
                        save)
    metrics = {"val_accuracy": last.get("val_accuracy"), "steps": args.steps, "beta": args.beta, "loss": args.loss}
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/curves.png",
                    ["loss", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected", "val_accuracy"], "DPO (train_dpo.py)")

    result = None
    if not args.skip_eval and args.data == "world":
        from minipost import evaluate
        from minipost.world import build_world

        world = build_world(seed=init_config.get("world_seed", 0), n_docs=1)
        refs, dirs = {"sft": ref}, {"sft": args.init}
        if args.base:
            base, _, _ = common.load_model(args.base, device)
            refs["base"], dirs["base"] = common.frozen(base), args.base
        # the references' answers once (stored by their own stages when they match), reused by every
        # evaluation below (the sweep's too)
        ref_results = {name: evaluate.evaluate_reference(m, dirs[name], tok, world, device=device, dtype=dtype,
                                                         seed=args.seed, limit=args.eval_limit) for name, m in refs.items()}
        result = evaluate.evaluate_model(policy, tok, world, device=device, dtype=dtype, refs=refs, ref_results=ref_results,
                                         seed=args.seed, limit=args.eval_limit)
        evaluate.print_samples(result, n=2, title="DPO model, held-out prompts (greedy)")
        evaluate.print_metrics(result["metrics"], "DPO evaluation")
        metrics.update(result["metrics"])
    saver.save(args.steps, metrics)
    if result is not None:
        evaluate.write_eval(args.out, result)
    print(f"wrote {args.out}")

    # ---- the beta sweep: how far (KL) each beta moves from SFT, and what the gold judge thinks of it
    if args.sweep and result is not None:
        from minipost import evaluate

        rows = []
        for beta in args.sweep:
            pol, _, _ = common.load_model(args.init, device)
            last, _ = train(pol, ref, train_enc, ref_lp, val_enc, val_ref_lp, tok, args, beta, args.sweep_steps, device, dtype)
            res = evaluate.evaluate_model(pol, tok, world, device=device, dtype=dtype, refs={"sft": ref},
                                          ref_results=ref_results, seed=args.seed, limit=args.eval_limit)
            m = res["metrics"]
            rows.append({"beta": beta, "gold_score": m["gold_score"], "gold_score_sampled": m["gold_score_sampled"], "kl_to_sft": m["kl_to_sft"],
                         "win_rate_vs_sft": m["win_rate_vs_sft"], "val_accuracy": last.get("val_accuracy")})
            print(f"sweep beta {beta:g}: gold {m['gold_score']:.3f} (samples {m['gold_score_sampled']:.3f}), "
                  f"KL to SFT {m['kl_to_sft']:.2f}, win vs SFT {m['win_rate_vs_sft']:.3f}")
        ckpt.atomic_write_json(f"{args.out}/sweep.json", rows)
    elif args.sweep:
        print("--beta-sweep skipped: it needs the toy world's judge (--data world) and the evaluation (no --skip-eval)")


if __name__ == "__main__":
    errors.run(main)
