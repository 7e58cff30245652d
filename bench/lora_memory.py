"""
Peak memory of DPO and PPO at the gpt2 shape (124M, random init), LoRA against full fine-tuning.

Each configuration runs the real stage script (train_dpo.py / train_ppo.py) in its own process on a tiny data
file for a few steps, and reads the "peak memory N MB" line every stage prints at the end of training (the peak
resident set on CPU, VmHWM; the CUDA allocator's peak on a GPU). What the numbers contain:

  DPO full   policy + its gradients + AdamW's two moments (4 copies of 124M fp32 = ~2 GB) + a frozen reference
  DPO LoRA   one network (the reference is the policy with adapters off) + adapters and their optimizer state
  PPO full   policy, reference, reward model, value model; gradients and AdamW moments for policy AND value
  PPO LoRA   policy (= reference, adapters off), reward model, value model with adapters; tiny optimizer state

plus the Python / torch runtime (~300 MB on CPU) and the activations of the small batches used here. A benchmark,
not a test: nothing fails. Writes bench/results/lora_memory.json.

    python bench/lora_memory.py                    # gpt2 shape, ~5 minutes on 2 cores
    python bench/lora_memory.py --quick            # a tiny shape: checks that it runs
    python bench/lora_memory.py --device cuda      # on a GPU: the allocator's peak
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, add_bench_args, machine_info, out_path  # also puts the repo on sys.path

import torch

from minipost import common
from minipost.model import GPT, GPTScalar, config_from_preset
from minipost.tokenizer import Tokenizer


def make_inputs(d: Path, preset: str, block_size: int):
    """A random language model (policy / reference) and a random reward model of the preset's shape, and data."""
    torch.manual_seed(0)
    cfg = config_from_preset(preset, block_size=block_size)
    tok = Tokenizer(cfg.vocab_size)
    common.save_stage(d / "lm", GPT(cfg), stage="sft", kind="lm", tokenizer=tok, args=None, metrics={})
    common.save_stage(d / "rm", GPTScalar(cfg), stage="rm", kind="scalar", tokenizer=tok, args=None, metrics={})
    rows = [{"prompt": f"Name a colour number {i}.", "chosen": f"Blue, number {i}.",
             "rejected": f"I would rather not say anything about colour {i} at all."} for i in range(16)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))


def run_stage(stage: str, d: Path, lora_rank: int, args) -> dict:
    common_flags = ["--init", str(d / "lm"), "--out", str(d / f"{stage}-r{lora_rank}"), "--overwrite",
                    "--skip-eval", "--dtype", "fp32", "--lora-rank", str(lora_rank)]
    if args.device:
        common_flags += ["--device", args.device]
    if stage == "dpo":
        flags = ["--data", str(d / "pairs.jsonl"), "--steps", str(args.steps), "--batch-size", "4",
                 "--micro-batch-size", "4", "--samples", "0"]
    else:
        flags = ["--rm", str(d / "rm"), "--prompts", str(d / "prompts.jsonl"), "--iterations", str(args.steps),
                 "--batch-size", "4", "--minibatch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "16",
                 "--base", "", "--samples", "0"]
    cmd = [sys.executable, str(ROOT / f"train_{stage}.py"), *common_flags, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads or 2)})
    peak = re.search(r"peak memory (\d+) MB", proc.stdout)
    params = re.search(r"parameters: ([\d.]+)M trainable of ([\d.]+)M", proc.stdout)
    if proc.returncode != 0 or not peak:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(f"{stage} lora_rank={lora_rank} failed (rc {proc.returncode})")
    return {"stage": stage, "lora_rank": lora_rank, "peak_mb": int(peak.group(1)),
            "trainable_m": float(params.group(1)), "total_m": float(params.group(2)), "command": " ".join(cmd[1:])}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_bench_args(p, "lora_memory")
    p.add_argument("--preset", default="gpt2", help="model shape (minipost/model.py PRESETS)")
    p.add_argument("--block-size", type=int, default=128, help="context of the random model (tokens)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps / PPO iterations per run")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    args = p.parse_args()
    if args.quick:
        args.preset, args.steps = "tiny", 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_inputs(d, args.preset, args.block_size)
        for stage in ("dpo", "ppo"):
            for r in (0, args.rank):
                row = run_stage(stage, d, r, args)
                rows.append(row)
                what = "full fine-tuning" if r == 0 else f"LoRA r={r}"
                print(f"{stage} {what:>16}: peak {row['peak_mb']:>6} MB, trainable {row['trainable_m']:.3f}M "
                      f"of {row['total_m']:.2f}M", flush=True)
    device = torch.device(args.device or "cpu")
    result = {"machine": machine_info(device), "preset": args.preset, "block_size": args.block_size,
              "steps": args.steps, "rows": rows}
    path = out_path(args, "lora_memory")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
