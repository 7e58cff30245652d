"""
Generation throughput: new tokens/s of greedy decoding, minipost's KV-cache `generate` against its
`use_cache=False` path and `transformers`' `generate()` with the same weights.

Implementations timed (one model per implementation, all with the same weights):
  minipost            KV cache, hand-written attention (what train_ppo.py and chat.py run)
  minipost-fused      KV cache, fused_attn=True (torch SDPA with the padding mask)
  minipost-nocache    use_cache=False: the whole sequence again every step (O(T^2) work per token)
  hf                  transformers GPT2LMHeadModel.generate, greedy, use_cache=True, attn "sdpa"

Every run decodes exactly the same number of new tokens: minipost with eos_token_id=None (never stops),
transformers with min_new_tokens = max_new_tokens (its EOS is masked until then). The no-cache path
decodes fewer tokens (--nocache-new-tokens) because it is slow; its tokens/s is normalized but is then
optimistic (short sequences are cheaper to recompute than long ones).

Shapes: `tiny` and the `gpt2` shape (124M, random init), batch 1 and 32, prompts of 24 random tokens,
64 new tokens (tiny) or 32 (gpt2, to fit run_all.py in about ten minutes on 2 cores). The no-cache path
runs on `tiny` only (--nocache-shapes): on the gpt2 shape at batch 32 one call takes most of a minute.
Dtypes: fp32, plus bf16 autocast where fast on the shapes of --bf16-shapes (tiny: what train_ppo.py
samples with on such a CPU; the gpt2 shape in fp32 only, for time). Rounds alternate between
implementations and the median is reported; an untimed first call of each is the warmup, and in fp32 it
also compares the greedy tokens of minipost and transformers.

Peak memory: each configuration again in a fresh process, one generate call; the weights plus what
generation needs (KV cache, logits), not the building of the model (see benchlib.reset_peak_memory).

    python bench/generate_throughput.py            # full: several minutes on a 2-core CPU
    python bench/generate_throughput.py --quick    # tiny shape, few tokens: checks that it runs
"""

import argparse
import gc

import torch

import benchlib
from minipost import common
from minipost.model import GPT, config_from_preset
from minipost.generation import index_generator

IMPLS = ["minipost", "minipost-fused", "minipost-nocache", "hf"]
NEW_TOKENS = {"tiny": 64, "gpt2": 32}  # per shape, unless --new-tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "generate_throughput")
    p.add_argument("--shapes", default="tiny,gpt2", help="comma-separated presets: tiny, gpt2")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--prompt-len", type=common.positive_int, default=24, help="prompt tokens (random ids, no padding)")
    p.add_argument("--new-tokens", type=common.nonneg_int, default=0, help="new tokens per sequence (0 = per shape: tiny 64, gpt2 32)")
    p.add_argument("--nocache-new-tokens", type=common.positive_int, default=16,
                   help="new tokens for the slow use_cache=False path (tokens/s normalized)")
    p.add_argument("--nocache-shapes", default="tiny", help="comma-separated shapes on which the use_cache=False path runs")
    p.add_argument("--dtypes", default="", choices=["", "auto", "fp32", "bf16"],
                   help="auto = fp32 + bf16 autocast where fast; empty = auto, or fp32 with --quick")
    p.add_argument("--bf16-shapes", default="tiny", help="comma-separated shapes on which bf16 autocast is also timed (where fast)")
    p.add_argument("--rounds", type=common.positive_int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--hf-attn", default="sdpa", help="transformers attn_implementation (sdpa | eager)")
    p.add_argument("--memory", default="all", choices=["all", "one", "none"],
                   help="peak memory: every configuration in its own process, only the first (a check), or none")
    # internal: one configuration in a fresh process, for its peak memory
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="minipost", help=argparse.SUPPRESS)
    p.add_argument("--shape", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.batches, args.new_tokens, args.nocache_new_tokens, args.rounds = "tiny", "1,4", 8, 4, 2
        args.memory = "one" if args.memory == "all" else args.memory
        args.dtypes = args.dtypes or "fp32"
    args.dtypes = args.dtypes or "auto"
    return args


def build(impl: str, base: GPT, hf_attn: str):
    if impl == "hf":
        hf = benchlib.hf_copy(base, attn_implementation=hf_attn)
        return hf.eval() if hf is not None else None
    cfg = type(base.config).from_dict({**base.config.to_dict(), "fused_attn": impl == "minipost-fused"})
    model = GPT(cfg).to(next(base.parameters()).device)
    model.load_state_dict(base.state_dict())
    return model.eval()


def make_generate(impl: str, model, prompt: torch.Tensor, n_new: int, device, dtype):
    """A closure that decodes n_new greedy tokens after `prompt` (B, T0) and returns the ids (B, T0 + n_new)."""
    mask = torch.ones_like(prompt)

    @torch.no_grad()
    def run():
        with common.autocast(device, dtype):
            if impl == "hf":
                eos = model.config.eos_token_id
                return model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                      do_sample=False, use_cache=True, pad_token_id=eos, eos_token_id=eos)
            return model.generate(prompt, n_new, temperature=0.0, attention_mask=mask, eos_token_id=None,
                                  use_cache=impl != "minipost-nocache")

    return run


def new_tokens_for(impl: str, shape: str, args) -> int:
    if impl == "minipost-nocache":
        return args.nocache_new_tokens
    return args.new_tokens or NEW_TOKENS[shape]


def child(args, device):
    """One configuration in this fresh process: one generate call, then the peak memory."""
    base_mem = benchlib.peak_memory_now(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = 0.0
    if args.impl == "hf":
        benchlib.import_transformers().logging.set_verbosity_error()
    torch.manual_seed(0)
    base = GPT(config_from_preset(args.shape)).to(device)
    model = build(args.impl, base, args.hf_attn)
    del base
    gc.collect()
    benchlib.reset_peak_memory(device)  # the peak from here on: the model's weights + what the run needs
    prompt = torch.randint(0, model.config.vocab_size - 1, (args.batch, args.prompt_len), device=device)
    run = make_generate(args.impl, model, prompt, new_tokens_for(args.impl, args.shape, args), device, benchlib.dtype_from_name(args.dtype))
    run()
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
    print(f"generate throughput on {device}: {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, "
          f"load {info['load_avg_1m']:.1f}")
    tr = benchlib.import_transformers()
    if tr is not None:
        tr.logging.set_verbosity_error()  # generation-config chatter
    dtypes = benchlib.bench_dtypes(device, args.dtypes)
    rows, memory_done = [], 0
    for shape in args.shapes.split(","):
        torch.manual_seed(0)
        base = GPT(config_from_preset(shape)).to(device)
        n_new = new_tokens_for("minipost", shape, args)
        if args.prompt_len + n_new > base.config.block_size:
            raise SystemExit(f"prompt {args.prompt_len} + {n_new} new tokens exceed the context of {base.config.block_size}")
        rounds = args.rounds
        impls = [k for k in IMPLS if (tr is not None or k != "hf")
                 and (k != "minipost-nocache" or shape in args.nocache_shapes.split(","))]
        models = {impl: build(impl, base, args.hf_attn) for impl in impls}
        models = {k: m for k, m in models.items() if m is not None}
        for B in [int(b) for b in args.batches.split(",")]:
            g = index_generator(B)
            # random prompt ids below EOS (the last id): no row starts out "finished"
            prompt = torch.randint(0, base.config.vocab_size - 1, (B, args.prompt_len), generator=g).to(device)
            for dtype in dtypes:
                if dtype != torch.float32 and shape not in args.bf16_shapes.split(","):
                    continue
                dname = benchlib.dtype_name(dtype)
                runs = {k: make_generate(k, m, prompt, new_tokens_for(k, shape, args), device, dtype) for k, m in models.items()}
                warm = {k: run() for k, run in runs.items()}  # untimed warmup round, its output kept for the check
                same = None
                if dtype == torch.float32 and "hf" in runs:  # the same function: the same greedy tokens
                    same = bool(torch.equal(warm["minipost"], warm["hf"]))
                    print(f"{shape} B={B}: greedy tokens minipost == transformers: {same}")
                times = benchlib.alternate(runs, rounds, device)
                tok_s = {k: B * new_tokens_for(k, shape, args) / benchlib.median(t) for k, t in times.items()}
                for k in runs:
                    row = {"shape": shape, "batch": B, "dtype": dname, "impl": k, "new_tokens": new_tokens_for(k, shape, args), "rounds": rounds,
                           "prompt_len": args.prompt_len, "tok_s": tok_s[k], "run_s": times[k],
                           "vs_hf": tok_s[k] / tok_s["hf"] if "hf" in tok_s else None,
                           "same_tokens_as_hf": same if k == "minipost" else None}
                    if args.memory == "all" or (args.memory == "one" and memory_done == 0):
                        mem = benchlib.measure_in_child("generate_throughput.py", [
                            "--child", "--impl", k, "--shape", shape, "--batch", str(B), "--dtype", dname,
                            "--prompt-len", str(args.prompt_len), "--new-tokens", str(n_new),
                            "--nocache-new-tokens", str(args.nocache_new_tokens), "--hf-attn", args.hf_attn,
                            "--device", str(device)])
                        memory_done += 1
                        row["peak_mib"] = mem and mem["delta_mib"]
                    rows.append(row)
        del models, base
        gc.collect()

    print(f"\ngreedy decoding, prompt {args.prompt_len} tokens, median of alternating rounds; "
          f"vs hf = tokens/s over transformers.generate (attn {args.hf_attn})")
    benchlib.print_table(rows, [("shape", "shape", "s"), ("batch", "B", "d"), ("dtype", "dtype", "s"), ("impl", "impl", "s"),
                                ("new_tokens", "new", "d"), ("tok_s", "new tok/s", ",.1f"), ("vs_hf", "vs hf", ".2f"),
                                ("peak_mib", "peak MiB", ",.0f")])
    benchlib.write_json(benchlib.out_path(args, "generate_throughput"), {"benchmark": "generate_throughput", "quick": args.quick, "machine": info,
                                   "args": {k: v for k, v in vars(args).items() if k not in ("child", "impl", "shape", "batch", "dtype")},
                                   "rows": rows})
    return rows


if __name__ == "__main__":
    main()
