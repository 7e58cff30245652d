"""
Where a PPO iteration of train_ppo.py spends its time: generation, scoring, training.

It imports train_ppo's own functions -- `rollout` (sampling + scoring + GAE), `forward_response`,
`forward_values`, `policy_loss`, `value_loss` -- and runs one iteration with train_ppo's default sizes
(`train_ppo.parse_args([])`: 64 rollouts, minibatches of 16, 4 PPO epochs, up to 32 new tokens):

  generation   policy.generate inside rollout (KV cache, temperature 1)
  scoring      the no-grad forwards inside rollout: policy log-probs (old_logp), reference log-probs,
               values, reward-model scores; "other" is the rest of rollout (tokenizing, collate, GAE)
  training     ppo_epochs x minibatches: forward (policy + value model, losses), backward, clip + AdamW

The training phase copies the body of train_ppo.main's inner loop (it lives inside main and cannot be
imported); it must be kept in step with it.

Models: random-init `tiny` models (GPT for policy and reference, GPTScalar for reward and value), not
the checkpoints: the timing depends on shapes, not weights. One consequence: a random policy almost never
emits EOS (1 in 4,096 per token), so every response runs the full 32 tokens -- the worst case for
generation; a trained policy stops earlier. Prompts are the toy world's PPO prompts (real lengths).

Each dtype runs in a fresh process, which also reports its peak memory (benchlib.peak_memory_now).

    python bench/ppo_breakdown.py            # fp32 and (where fast) bf16, 1 warmup + 2 timed iterations
    python bench/ppo_breakdown.py --quick    # a small batch, one iteration: checks that it runs
"""

import argparse
import statistics
import time
from collections import defaultdict

import torch

import benchlib
import train_ppo
from minipost import common, data
from minipost.model import GPT, GPTScalar, config_from_preset
from minipost.tokenizer import Tokenizer
from minipost.generation import index_generator, make_generator


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "ppo_breakdown")
    p.add_argument("--preset", default="tiny", help="model shape of all four models (random init)")
    p.add_argument("--dtypes", default="", choices=["", "auto", "fp32", "bf16"],
                   help="auto = fp32 + bf16 autocast where fast; empty = auto, or fp32 with --quick")
    p.add_argument("--iterations", type=common.positive_int, default=2, help="timed PPO iterations (median per phase)")
    p.add_argument("--warmup", type=common.nonneg_int, default=1, help="untimed PPO iterations first")
    p.add_argument("--fused-attn", action="store_true", help="models with fused_attn=True (train_ppo uses the checkpoint's setting: off)")
    # internal: one dtype in a fresh process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup = 1, 0
        args.dtypes = args.dtypes or "fp32"
    args.dtypes = args.dtypes or "auto"
    return args


def ppo_args(quick: bool):
    """train_ppo's defaults; --quick shrinks the batch so that one iteration takes seconds."""
    a = train_ppo.parse_args([])
    if quick:
        a.batch_size, a.minibatch_size, a.ppo_epochs, a.max_new_tokens = 8, 4, 1, 8
    return a


class PhaseTimer:
    """Accumulates seconds per phase name. Wraps a model's forward so that its calls are timed -- but only
    outside generation (the policy's forwards inside generate belong to the generation phase)."""

    def __init__(self, device):
        self.device = device
        self.seconds = defaultdict(float)
        self.in_generation = False

    def wrap_forward(self, model, name: str):
        forward = model.forward

        def timed_forward(*a, **kw):
            if self.in_generation:
                return forward(*a, **kw)
            benchlib.sync(self.device)
            t0 = time.perf_counter()
            out = forward(*a, **kw)
            benchlib.sync(self.device)
            self.seconds[name] += time.perf_counter() - t0
            return out

        model.forward = timed_forward  # an instance attribute: nn.Module.__call__ finds it first

    def wrap_generate(self, model):
        generate = model.generate

        def timed_generate(*a, **kw):
            self.in_generation = True
            try:
                benchlib.sync(self.device)
                t0 = time.perf_counter()
                out = generate(*a, **kw)
                benchlib.sync(self.device)
                self.seconds["generation"] += time.perf_counter() - t0
            finally:
                self.in_generation = False
            return out

        model.generate = timed_generate


def train_phase(policy, value_model, opt_pi, opt_v, ro, perm, args, device, dtype, timer: PhaseTimer, data_rng):
    """train_ppo.main's PPO epochs over minibatches, timed as forward / backward / optimizer."""
    policy.train()
    value_model.train()
    mask, T0 = ro["mask"], ro["T0"]
    for epoch in range(args.ppo_epochs):
        order = perm if epoch == 0 else torch.randperm(args.batch_size, generator=data_rng).to(device)
        for idx in order.split(args.minibatch_size):
            t0 = time.perf_counter()
            m = mask[idx]
            logp, logits = train_ppo.forward_response(policy, ro["ids"][idx], ro["attn"][idx], T0, device, dtype)
            pg_loss, _ = train_ppo.policy_loss(logp, ro["old_logp"][idx], ro["advantages"][idx], m, args.clip)
            values = train_ppo.forward_values(value_model, ro["ids"][idx], ro["attn"][idx], T0, device, dtype)
            vf_loss = train_ppo.value_loss(values, ro["old_values"][idx], ro["returns"][idx], m, args.value_clip)
            loss = pg_loss + args.vf_coef * vf_loss
            benchlib.sync(device)
            t1 = time.perf_counter()
            opt_pi.zero_grad(set_to_none=True)
            opt_v.zero_grad(set_to_none=True)
            loss.backward()
            benchlib.sync(device)
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip)
            torch.nn.utils.clip_grad_norm_(value_model.parameters(), args.grad_clip)
            opt_pi.step()
            opt_v.step()
            with torch.no_grad():  # the entropy statistic main computes every minibatch
                probs = torch.softmax(logits, dim=-1)
                train_ppo.masked_mean(-(probs * torch.log_softmax(logits, dim=-1)).sum(-1), m).item()
            benchlib.sync(device)
            t3 = time.perf_counter()
            timer.seconds["train_forward"] += t1 - t0
            timer.seconds["train_backward"] += t2 - t1
            timer.seconds["train_optimizer"] += t3 - t2


def child(args, device):
    """Warmup + timed PPO iterations in this fresh process; reports phase medians and peak memory."""
    base_mem = benchlib.peak_memory_now(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = 0.0
    dtype = benchlib.dtype_from_name(args.dtype)
    pa = ppo_args(args.quick)
    torch.manual_seed(pa.seed)
    cfg = config_from_preset(args.preset, fused_attn=args.fused_attn)
    # the four models of train_ppo: policy + frozen reference (same weights), frozen RM + value (same weights)
    policy, ref = GPT(cfg).to(device), GPT(cfg).to(device)
    ref.load_state_dict(policy.state_dict())
    rm, value_model = GPTScalar(cfg).to(device), GPTScalar(cfg).to(device)
    value_model.load_state_dict(rm.state_dict())
    common.frozen(ref)
    common.frozen(rm)
    tok = Tokenizer(cfg.vocab_size)
    prompts = [r["prompt"] for r in data.load_prompts("world")[0]]
    opt_pi = common.make_optimizer(policy, pa.lr, weight_decay=0.0)
    opt_v = common.make_optimizer(value_model, pa.value_lr, weight_decay=0.0)
    gen = index_generator(pa.seed)
    sample_gen = make_generator(device, pa.seed)

    timer = PhaseTimer(device)
    timer.wrap_generate(policy)
    for model, name in [(policy, "score_policy"), (ref, "score_reference"), (rm, "score_reward"), (value_model, "score_value")]:
        timer.wrap_forward(model, name)
    per_iter = []
    for it in range(args.warmup + args.iterations):
        timer.seconds.clear()
        t0 = time.perf_counter()
        picks = torch.randint(0, len(prompts), (pa.batch_size,), generator=gen).tolist()
        perm = torch.randperm(pa.batch_size, generator=gen).to(device)
        policy.eval()
        ro = train_ppo.rollout(policy, ref, rm, value_model, tok, [prompts[i] for i in picks], pa, pa.kl_coef,
                               sample_gen, device, dtype, perm)
        benchlib.sync(device)
        t_roll = time.perf_counter() - t0
        # the training forwards go through the same wrapped forwards: keep only rollout's scoring counts
        scoring = {k: v for k, v in timer.seconds.items() if k.startswith("score_")}
        train = PhaseTimer(device)
        train_phase(policy, value_model, opt_pi, opt_v, ro, perm, pa, device, dtype, train, data_rng=gen)
        total = time.perf_counter() - t0
        phases = {"generation": timer.seconds["generation"], **scoring,
                  "score_other": t_roll - timer.seconds["generation"] - sum(scoring.values()),
                  **train.seconds, "total": total, "response_tokens": float(ro["mask"].sum())}
        if it >= args.warmup:
            per_iter.append(phases)
    med = {k: statistics.median(p[k] for p in per_iter) for k in per_iter[0]}
    peak = benchlib.peak_memory_now(device)
    benchlib.child_report({"phases": med, "per_iteration": per_iter, "ppo_args": {
        k: getattr(pa, k) for k in ("batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens")},
        "base_mib": base_mem, "peak_mib": peak, "delta_mib": peak - base_mem})


PHASES = [("generation", "generation"), ("score_policy", "  score: policy log-probs"),
          ("score_reference", "  score: reference log-probs"), ("score_reward", "  score: reward model"),
          ("score_value", "  score: value model"), ("score_other", "  score: other (collate, GAE)"),
          ("train_forward", "train: forward + losses"), ("train_backward", "train: backward"),
          ("train_optimizer", "train: clip + AdamW + stats")]


def main(argv=None):
    args = parse_args(argv)
    benchlib.set_threads(args.threads)
    device = common.pick_device(args.device)
    if args.child:
        return child(args, device)
    info = benchlib.machine_info(device)
    auto_dtype, why = common.pick_dtype(device, "auto")
    print(f"PPO iteration breakdown on {device}: {info['cpu']}, {info['torch_threads']} threads, load {info['load_avg_1m']:.1f}; "
          f"train_ppo.py would use {benchlib.dtype_name(auto_dtype)} ({why})")
    results = {}
    for dtype in benchlib.bench_dtypes(device, args.dtypes):
        dname = benchlib.dtype_name(dtype)
        child_args = ["--child", "--dtype", dname, "--preset", args.preset, "--iterations", str(args.iterations),
                      "--warmup", str(args.warmup), "--device", str(device)]
        res = benchlib.measure_in_child("ppo_breakdown.py", child_args + (["--quick"] if args.quick else [])
                                        + (["--fused-attn"] if args.fused_attn else []))
        if res is not None:
            results[dname] = res
    if not results:
        raise SystemExit("every configuration failed")
    pa = next(iter(results.values()))["ppo_args"]
    print(f"\nrandom-init {args.preset} models, train_ppo sizes {pa}; median of {args.iterations} iteration(s), seconds")
    rows = []
    for key, label in PHASES + [("total", "total per iteration")]:
        row = {"phase": label}
        for dname, res in results.items():
            t = res["phases"].get(key, 0.0)
            row[f"{dname}_s"] = t
            row[f"{dname}_pct"] = t / res["phases"]["total"]
        rows.append(row)
    cols = [("phase", "phase", "s")]
    for dname in results:
        cols += [(f"{dname}_s", f"{dname} s", ".3f"), (f"{dname}_pct", "share", ".1%")]
    benchlib.print_table(rows, cols)
    for dname, res in results.items():
        print(f"{dname}: peak memory {res['delta_mib']:,.0f} MiB above the post-import footprint; "
              f"{res['phases']['response_tokens']:.0f} response tokens per iteration")
    benchlib.write_json(benchlib.out_path(args, "ppo_breakdown"), {"benchmark": "ppo_breakdown", "quick": args.quick, "machine": info,
                                   "train_ppo_dtype": benchlib.dtype_name(auto_dtype), "preset": args.preset,
                                   "fused_attn": args.fused_attn, "results": results, "rows": rows})
    return results


if __name__ == "__main__":
    main()
