"""
Training throughput: tokens/s of forward + backward + AdamW step, minipost's GPT against
`transformers.GPT2LMHeadModel` with the identical config and weights, same batch, same dtype.

Implementations timed (each its own model copy and optimizer, all starting from the same weights):
  minipost            hand-written masked-softmax attention (the default path)
  minipost-fused      fused_attn=True: torch's scaled_dot_product_attention
  hf-eager, hf-sdpa   transformers with attn_implementation "eager" / "sdpa" (skipped without transformers)

Shapes: `tiny` (the CPU preset, B=16, T=128) and the `gpt2` shape (124M, random init, B=4, T=256).
Dtypes: fp32, plus bf16 autocast where it is fast (CUDA with bf16; CPUs with AMX / AVX512-BF16).

Rounds ALTERNATE (minipost, minipost-fused, hf-eager, hf-sdpa, minipost, ...) and the median round is
reported, so drift on a shared machine hits every implementation alike. Before timing, every optimizer
allocates its AdamW state (see allocate_optimizer_state). Rounds, steps per round and untimed warmup
rounds are set per shape (tiny: 1 warmup + 5 rounds x 2 steps; gpt2: 3 rounds x 1 step of 3-7 s on 2 cores,
no warmup) so that run_all.py finishes in about ten minutes on a 2-core CPU; the flags override them.

Model FLOPs utilization (MFU): FLOPs per token = 6 N + 12 L T d (Kaplan et al. 2020; PaLM appendix B),
where N counts the parameters of every matmul -- the non-embedding parameters plus the tied lm_head
(V x d, a real matmul of 6 V d FLOPs per token; the position embedding is a lookup and is left out) --
and 12 L T d is the attention scores and weighted sum (QK^T and AV, forward x1 + backward x2, without
discounting the causal half). MFU = FLOPs/token x tokens/s / measured matmul peak (matmul_peak.py) of the
same dtype.

Peak memory: each configuration runs again in a fresh process and reports its peak RSS (VmHWM, i.e.
ru_maxrss of this process image) above its footprint after imports, or torch.cuda.max_memory_allocated on
CUDA. The child first lets AdamW allocate its state (a step on zero gradients), then runs one real step:
the peak of a steady-state step (weights, AdamW state, activations, gradients) at half the cost of two.

    python bench/train_throughput.py               # full: minutes on a 2-core CPU
    python bench/train_throughput.py --quick       # ~15 s: tiny shape with a small batch, 2 rounds
    python bench/train_throughput.py --shapes tiny --dtypes fp32
"""

import argparse
import gc

import torch
import torch.nn.functional as F

import benchlib
import matmul_peak
from minipost import common
from minipost.model import GPT, config_from_preset
from minipost.generation import index_generator

# (preset, batch size, sequence length); --quick shrinks the tiny batch and drops the gpt2 shape
SHAPES = {"tiny": ("tiny", 16, 128), "gpt2": ("gpt2", 4, 256)}
# (alternating rounds, steps per round, untimed warmup rounds) per shape, unless --rounds / --steps / --warmup
REPEATS = {"tiny": (5, 2, 1), "gpt2": (3, 1, 0)}
IMPLS = ["minipost", "minipost-fused", "hf-eager", "hf-sdpa"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "train_throughput")
    p.add_argument("--shapes", default="tiny,gpt2", help="comma-separated: tiny, gpt2")
    p.add_argument("--dtypes", default="", choices=["", "auto", "fp32", "bf16"],
                   help="auto = fp32 + bf16 autocast where fast; empty = auto, or fp32 with --quick")
    p.add_argument("--rounds", type=common.nonneg_int, default=0,
                   help="alternating rounds; the median is reported (0 = per shape: tiny 5, gpt2 3)")
    p.add_argument("--steps", type=common.nonneg_int, default=0,
                   help="training steps per implementation per round (0 = per shape: tiny 2, gpt2 1)")
    p.add_argument("--warmup", type=int, default=-1,
                   help="untimed alternating rounds first (allocator, thread pools); -1 = per shape: tiny 1, gpt2 0")
    p.add_argument("--memory", default="all", choices=["all", "one", "none"],
                   help="peak memory: every configuration in its own process, only the first (a check), or none")
    # internal: one configuration in a fresh process, for its peak memory
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="minipost", help=argparse.SUPPRESS)
    p.add_argument("--shape", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seq", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.rounds, args.steps, args.warmup = "tiny", 2, 1, 1
        args.memory = "one" if args.memory == "all" else args.memory
        args.dtypes = args.dtypes or "fp32"
    args.dtypes = args.dtypes or "auto"
    for s in args.shapes.split(","):
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; choose from {list(SHAPES)}")
    return args


def shape_of(name: str, quick: bool) -> tuple[str, int, int]:
    preset, B, T = SHAPES[name]
    return (preset, 4, 64) if quick else (preset, B, T)


def repeats(shape: str, args) -> tuple[int, int, int]:
    """(rounds, steps per round, warmup rounds) for this shape: the flags when given, else REPEATS."""
    rounds, steps, warmup = REPEATS[shape]
    return args.rounds or rounds, args.steps or steps, warmup if args.warmup < 0 else args.warmup


def allocate_optimizer_state(model, opt):
    """AdamW allocates its state (two tensors per parameter) in its first step: take one step on zero
    gradients (it moves nothing but the weight decay), so that the next real step is a steady-state one."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def flops_per_token(model: GPT, T: int) -> int:
    """6 N + 12 L T d, N = non-embedding parameters + the lm_head matmul (tied to wte, V x d)."""
    cfg = model.config
    n_matmul = model.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
    return 6 * n_matmul + 12 * cfg.n_layer * T * cfg.n_embd


def build(impl: str, base: GPT):
    """The model for `impl`, with base's weights: a minipost GPT (hand-written or fused) or a transformers copy."""
    if impl.startswith("hf-"):
        return benchlib.hf_copy(base, attn_implementation=impl.removeprefix("hf-"))
    cfg = type(base.config).from_dict({**base.config.to_dict(), "fused_attn": impl == "minipost-fused"})
    model = GPT(cfg).to(next(base.parameters()).device)
    model.load_state_dict(base.state_dict())
    return model


def make_step(model, x, y, device, dtype, opt=None):
    """One training step as a closure: zero grads, forward (autocast), cross-entropy, backward, AdamW."""
    is_hf = not isinstance(model, GPT)
    model.train()
    opt = opt or common.make_optimizer(model, lr=1e-4, weight_decay=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        with common.autocast(device, dtype):
            logits = model(input_ids=x, use_cache=False).logits if is_hf else model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))  # mean over tokens
        loss.backward()
        opt.step()

    return step


@torch.no_grad()
def max_logit_diff(ours: GPT, theirs, x) -> float:
    """fp32 sanity check that the copy is the same function: max |logits_ours - logits_hf|."""
    return (ours(x) - theirs(input_ids=x, use_cache=False).logits).abs().max().item()


def batch_for(cfg, B, T, device, seed=0):
    g = index_generator(seed)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    return data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device)  # inputs (B, T), next-token targets (B, T)


def child(args, device):
    """One configuration in this fresh process: AdamW state, one step, then report the peak memory."""
    base_mem = benchlib.peak_memory_now(device)  # after imports (torch, transformers for hf-*)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = 0.0
    dtype = benchlib.dtype_from_name(args.dtype)
    preset, B, T = shape_of(args.shape, False)
    B, T = args.batch or B, args.seq or T
    torch.manual_seed(0)
    base = GPT(config_from_preset(preset)).to(device)
    model = build(args.impl, base)
    del base
    gc.collect()
    benchlib.reset_peak_memory(device)  # the peak from here on: the model's weights + what the run needs
    x, y = batch_for(model.config, B, T, device)
    opt = common.make_optimizer(model, lr=1e-4, weight_decay=0.1)
    allocate_optimizer_state(model, opt)
    step = make_step(model, x, y, device, dtype, opt)
    for _ in range(args.steps or 1):
        step()
    benchlib.sync(device)
    peak = benchlib.peak_memory_now(device)
    benchlib.child_report({"base_mib": base_mem, "peak_mib": peak, "delta_mib": peak - base_mem})


def main(argv=None):
    args = parse_args(argv)
    benchlib.set_threads(args.threads)
    device = common.pick_device(args.device)
    if args.child:
        return child(args, device)
    info = benchlib.machine_info(device)
    print(f"train throughput on {device}: {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, "
          f"load {info['load_avg_1m']:.1f}")
    have_hf = benchlib.import_transformers() is not None
    dtypes = benchlib.bench_dtypes(device, args.dtypes)
    peak_sizes, peak_reps = ([1024], 3) if args.quick else ([1024, 2048], 10)  # as matmul_peak.py measures it
    peaks = matmul_peak.peaks(device, dtypes, peak_sizes, peak_reps)
    print("matmul peak: " + ", ".join(f"{d} {r['gflops']:.1f} GFLOP/s" for d, r in peaks.items()))

    rows = []
    memory_done = 0
    for shape in args.shapes.split(","):
        preset, B, T = shape_of(shape, args.quick)
        torch.manual_seed(0)
        base = GPT(config_from_preset(preset)).to(device)
        x, y = batch_for(base.config, B, T, device)
        fpt = flops_per_token(base, T)
        rounds, n_steps, warmup = repeats(shape, args)
        models = {impl: build(impl, base) for impl in IMPLS if have_hf or not impl.startswith("hf-")}
        models = {k: m for k, m in models.items() if m is not None}
        diffs = {k: max_logit_diff(base.eval(), m.eval(), x) for k, m in models.items() if k.startswith("hf-")}
        for k, d in diffs.items():
            print(f"{shape}: fp32 max |logits minipost - {k}| = {d:.2e} (same function if ~1e-5)")
        for dtype in dtypes:
            dname = benchlib.dtype_name(dtype)
            opts = {k: common.make_optimizer(m, lr=1e-4, weight_decay=0.1) for k, m in models.items()}
            for k, m in models.items():
                allocate_optimizer_state(m, opts[k])
            steps = {k: make_step(m, x, y, device, dtype, opts[k]) for k, m in models.items()}
            runners = {k: (lambda s=s: [s() for _ in range(n_steps)]) for k, s in steps.items()}
            benchlib.alternate(runners, warmup, device)  # untimed: allocator, thread pools, kernel choice
            times = benchlib.alternate(runners, rounds, device)
            tok_s = {k: B * T * n_steps / benchlib.median(t) for k, t in times.items()}
            best_hf = max((v for k, v in tok_s.items() if k.startswith("hf-")), default=None)
            for k in models:
                row = {"shape": shape, "B": B, "T": T, "dtype": dname, "impl": k, "tok_s": tok_s[k],
                       "rounds": rounds, "steps": n_steps, "warmup": warmup,
                       "ms_step": 1000 * benchlib.median(times[k]) / n_steps, "round_s": times[k],
                       "params": base.num_params(), "flops_per_token": fpt,
                       "tflops": fpt * tok_s[k] / 1e12, "mfu": fpt * tok_s[k] / (peaks[dname]["gflops"] * 1e9),
                       "vs_hf": tok_s[k] / best_hf if best_hf else None,
                       "vs_fused": tok_s[k] / tok_s["minipost-fused"] if k.startswith("minipost") else None, "logit_diff_fp32": diffs.get(k)}
                if args.memory == "all" or (args.memory == "one" and memory_done == 0):
                    mem = benchlib.measure_in_child("train_throughput.py", [
                        "--child", "--impl", k, "--shape", shape, "--dtype", dname, "--batch", str(B),
                        "--seq", str(T), "--steps", "1", "--device", str(device)])
                    memory_done += 1
                    print(f"  peak memory {k} {shape} {dname}: {mem}")
                    row["peak_mib"] = mem and mem["delta_mib"]
                rows.append(row)
        del models, base
        gc.collect()

    print(f"\nmedian of alternating rounds (rounds, steps, warmup: tiny {repeats('tiny', args)}, gpt2 {repeats('gpt2', args)}); vs_hf = tokens/s over the faster "
          f"transformers implementation; vs_fused = over minipost-fused; MFU against the measured matmul peak")
    benchlib.print_table(rows, [("shape", "shape", "s"), ("dtype", "dtype", "s"), ("impl", "impl", "s"),
                                ("tok_s", "tok/s", ",.0f"), ("ms_step", "ms/step", ".1f"), ("vs_hf", "vs hf", ".2f"),
                                ("vs_fused", "vs fused", ".2f"), ("mfu", "MFU", ".1%"), ("peak_mib", "peak MiB", ",.0f")])
    benchlib.write_json(benchlib.out_path(args, "train_throughput"), {"benchmark": "train_throughput", "quick": args.quick, "machine": info,
                                   "args": {k: v for k, v in vars(args).items() if k not in ("child", "impl", "shape", "dtype", "batch", "seq")},
                                   "matmul_peak": peaks, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
