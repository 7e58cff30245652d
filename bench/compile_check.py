"""
What torch.compile (inductor, the default backend; C++/OpenMP code on CPU) buys on the pipeline's shapes, with the
compile time counted: one training step of train_base.py's shape (tiny, B=16, T=128: forward, cross-entropy,
backward, AdamW) and one no-grad scoring forward of a DPO/RM-sized batch (tiny, B=32, T=96), eager against
compiled, fp32 and bf16 autocast.

Reported per configuration: the first compiled call (compilation + one run), the median step of each side over
alternating steps (eager, compiled, eager, ...), and the break-even: how many steps the compiled model must run
before its saved milliseconds pay for the compilation. Every pipeline stage is a fresh process, so each stage pays
the compile time again (inductor's on-disk cache shortens a second compilation of the same graph; the first
call here runs with a fresh cache directory, as on a fresh clone).

    python bench/compile_check.py                  # fp32 + bf16 where fast
    python bench/compile_check.py --quick          # 1 dtype, 3 steps: checks that it runs
"""

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F

import benchlib
from minipost import common
from minipost.model import GPT, config_from_preset, token_logprobs
from minipost.generation import index_generator

CASES = {"train B=16 T=128": ("train", 16, 128), "score B=32 T=96": ("score", 32, 96)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "compile_check")
    p.add_argument("--dtypes", default="", choices=["", "auto", "fp32", "bf16"], help="empty = auto (fp32 with --quick)")
    p.add_argument("--steps", type=common.positive_int, default=8, help="timed steps of each side (alternating)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.dtypes = 3, args.dtypes or "fp32"
    args.dtypes = args.dtypes or "auto"
    return args


def make_call(kind, model, x, y, device, dtype):
    """One training step (kind 'train') or one no-grad forward with per-token log-probs (kind 'score')."""
    if kind == "score":
        def score():
            with torch.no_grad(), common.autocast(device, dtype):
                logits = model(x)  # (B, T, V)
            return token_logprobs(logits[:, :-1].float(), x[:, 1:]).sum()  # (B, T-1) summed
        return score
    opt = common.make_optimizer(model, lr=1e-4, weight_decay=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        with common.autocast(device, dtype):
            logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        opt.step()
        return loss

    return step


def main(argv=None):
    args = parse_args(argv)
    benchlib.set_threads(args.threads)
    device = common.pick_device(args.device)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")  # a fresh clone's cold cache
    info = benchlib.machine_info(device)
    print(f"torch.compile check on {device}: {info['cpu']}, {info['torch_threads']} threads, load {info['load_avg_1m']:.1f}")
    rows = []
    for dtype in benchlib.bench_dtypes(device, args.dtypes):
        for case, (kind, B, T) in CASES.items():
            torch.manual_seed(0)
            eager = GPT(common.dropout_off(config_from_preset("tiny"))).to(device)
            compiled_model = GPT(eager.config).to(device)
            compiled_model.load_state_dict(eager.state_dict())
            g = index_generator(0)
            data = torch.randint(0, eager.config.vocab_size, (B, T + 1), generator=g)
            x, y = data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device)  # (B, T) each
            torch._dynamo.reset()
            compiled = torch.compile(compiled_model)
            calls = {"eager": make_call(kind, eager, x, y, device, dtype), "compiled": make_call(kind, compiled, x, y, device, dtype)}
            first = {name: benchlib.timed(fn, device) for name, fn in calls.items()}  # compiled: compilation + 1 run
            times = benchlib.alternate(calls, args.steps, device)
            ms = {k: 1000 * benchlib.median(t) for k, t in times.items()}
            saved = ms["eager"] - ms["compiled"]
            compile_s = first["compiled"] - ms["compiled"] / 1000
            row = {"case": case, "dtype": benchlib.dtype_name(dtype), "eager_ms": ms["eager"], "compiled_ms": ms["compiled"],
                   "speedup": ms["eager"] / ms["compiled"], "first_compiled_s": first["compiled"], "compile_s": compile_s,
                   "first_eager_s": first["eager"], "break_even_steps": compile_s * 1000 / saved if saved > 0 else None,
                   "eager_s": times["eager"], "compiled_s": times["compiled"]}
            print(f"{case} {row['dtype']}: eager {ms['eager']:.1f} ms, compiled {ms['compiled']:.1f} ms "
                  f"({row['speedup']:.2f}x); compile {compile_s:.1f} s; break-even after "
                  f"{'never' if row['break_even_steps'] is None else format(row['break_even_steps'], ',.0f')} steps", flush=True)
            rows.append(row)
    benchlib.print_table(rows, [("case", "case", "s"), ("dtype", "dtype", "s"), ("eager_ms", "eager ms", ",.1f"),
                                ("compiled_ms", "compiled ms", ",.1f"), ("speedup", "speedup", ".2f"),
                                ("compile_s", "compile s", ",.1f"), ("break_even_steps", "break-even steps", ",.0f")])
    benchlib.write_json(benchlib.out_path(args, "compile_check"), {"benchmark": "compile_check", "quick": args.quick,
                                                                  "machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
