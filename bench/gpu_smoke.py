"""
The GPU smoke run: every path a student takes on a GPU, in a few minutes, with nothing downloaded.

    python bench/gpu_smoke.py                       # on one CUDA GPU (< 8 minutes on an H100-class card)
    python bench/gpu_smoke.py --device cpu --shape tiny --reuse DIR    # the test suite's run (tests/test_scripts.py)

A CPU-only machine cannot see the bugs that only a GPU raises (a CPU generator sampling CUDA tensors, a CPU
tensor handed to NCCL, a train state saved on one device and loaded on another). This script runs, on the
device it is given:

  pipeline         `pipeline.py --micro`: every stage and every evaluation (best-of-n, online DPO, GRPO's pass@k)
  chat             chat.py sampling at temperature 1 with top-p, from the micro run's GRPO policy
  gpu.md <stage>   docs/gpu.md's commands (the README's GPU section) with its batch sizes, a few steps each, at
                   GPT-2's real shape (124M random weights in a save_pretrained folder; Alpaca and HH-RLHF files
                   in their real formats, with dialogues longer than the context) -- --shape tiny shrinks both
  collectives      every function of minipost/distributed.py under `torchrun --nproc_per_node 1` (NCCL on CUDA)
  torchrun sft/ppo a stage's training loop under torchrun (the collectives inside a real step)
  resume a->b      a GRPO run stopped after one step on one device and resumed on the other (CUDA <-> CPU)

and prints one table: command, ok/FAIL, seconds, peak GPU memory (the device's used memory, polled: CUDA's
context included). It exits non-zero if anything failed; each failure's last lines are printed below the table.
Results go to bench/results/gpu_smoke_<gpu>.md with --save.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib  # noqa: F401  (puts the repository root on sys.path)
import torch

from realdata_files import GPT2_SHAPE, TINY, gpu_commands, write_alpaca, write_hf_gpt2, write_hh

ROOT = Path(__file__).resolve().parents[1]

# Appended to docs/gpu.md's commands: a few steps. --shape gpt2 keeps the README's batch sizes (the memory they
# need is the point); --shape tiny also shrinks the batches, as tests/test_realdata.py does.
FEW_STEPS = {
    "train_base.py": [],
    "train_sft.py": ["--steps", "3", "--samples", "2"],
    "train_rm.py": ["--steps", "3", "--norm-samples", "64", "--samples", "2"],
    "train_ppo.py": ["--iterations", "1", "--samples", "2"],
    "train_dpo.py": ["--steps", "3", "--samples", "2"],
}
SMALL_BATCHES = {
    "train_sft.py": ["--batch-size", "4", "--micro-batch-size", "2"],
    "train_rm.py": ["--batch-size", "4", "--micro-batch-size", "2", "--norm-samples", "4"],
    "train_ppo.py": ["--batch-size", "4", "--minibatch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "16"],
    "train_dpo.py": ["--batch-size", "4", "--micro-batch-size", "2"],
}
MICRO_GRPO = ["--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--minibatch-size", "8",
              "--max-new-tokens", "8", "--skip-eval", "--save-every", "1"]


class MemoryPoll:
    """The device's peak used memory while a command runs (every process on it: the command's subprocesses too)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.peak, self.stop = 0, threading.Event()

    def __enter__(self):
        if self.cuda:
            free, total = torch.cuda.mem_get_info()
            self.base = total - free  # what was in use before (this process's own context)
            threading.Thread(target=self.poll, daemon=True).start()
        return self

    def poll(self):
        while not self.stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free - self.base)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop.set()

    def text(self) -> str:
        return f"{self.peak / 2**20:,.0f} MiB" if self.cuda else "-"


def run(rows: list, name: str, args: list, *, env=None, timeout=600, expect=None, device="cpu"):
    """Run one command; append (name, ok, seconds, memory, command, tail) to rows."""
    t0 = time.time()
    with MemoryPoll(device) as mem:
        try:
            proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})
            out, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out, code = f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}", -1
    ok = code == 0 and "Traceback" not in out and (expect is None or expect in out)
    if code == 0 and expect is not None and expect not in out:
        out += f"\n[expected {expect!r} in the output]"
    rows.append((name, ok, time.time() - t0, mem.text(), " ".join(map(str, args)), out[-2500:]))
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({time.time() - t0:.0f} s)", flush=True)
    return ok


def python(*args) -> list:
    return [sys.executable, *map(str, args)]


def torchrun(*args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
            str(29500 + os.getpid() % 1000), *map(str, args)]


def collectives_child(device: str):
    """Under torchrun: every function of distributed.py on this process's device, with values checked."""
    from minipost import common, distributed
    from minipost.model import GPT, GPTConfig

    dev = distributed.setup(common.pick_device(device))
    assert distributed.world_size() == 1 and torch.distributed.is_initialized(), "not in a process group"
    backend = torch.distributed.get_backend()
    assert distributed.sum_all(3) == 3 and distributed.sum_all(2.5) == 2.5
    t = distributed.sum_all(torch.tensor(4.0, device=dev))
    assert t.item() == 4.0 and t.device.type == dev.type
    assert distributed.mean_metrics({"loss": 1.5, "none": None}) == {"loss": 1.5, "none": None}
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16)).to(dev)
    distributed.broadcast_params(model)
    model(torch.zeros(1, 4, dtype=torch.long, device=dev)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    distributed.all_reduce_grads(model, average=True)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert distributed.max_abs_param_diff(model) == 0.0
    distributed.barrier()
    assert distributed.shard(list(range(5))) == list(range(5))
    distributed.cleanup()
    print(f"collectives ok on {dev} ({backend})")


def main(argv=None):
    p = argparse.ArgumentParser(description="every GPU path of minipost, a few steps each, one table")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the test suite's tiny run)")
    p.add_argument("--shape", default="gpt2", choices=["gpt2", "tiny"],
                   help="docs/gpu.md's commands at GPT-2's real shape and batch sizes, or tiny and small batches")
    p.add_argument("--reuse", default="", help="a finished `pipeline.py --micro` directory: skip running it")
    p.add_argument("--work", default="", help="where to write (default: a temporary directory)")
    p.add_argument("--save", action="store_true", help="write the table to bench/results/gpu_smoke_<device>.md")
    p.add_argument("--collectives-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.collectives_child:
        return collectives_child(a.device)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA GPU; use --device cpu --shape tiny")
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    dev, rows, t_start = ["--device", a.device], [], time.time()

    # 1. the embedded default, every stage and evaluation
    micro = Path(a.reuse) if a.reuse else work / "micro"
    if not a.reuse:
        run(rows, "pipeline --micro", python("pipeline.py", "--micro", "--checkpoints", micro, *dev), device=a.device,
            timeout=1800)
    # 2. chat: sampling with a generator on the device
    run(rows, "chat.py (T=1, top-p)", python("chat.py", "--init", micro / "grpo", "--prompt", "What is the capital of "
        "France?", "--temperature", "1", "--top-p", "0.9", *dev), device=a.device)
    # 3. docs/gpu.md's commands on files in the real formats
    shape = GPT2_SHAPE if a.shape == "gpt2" else TINY
    files = {"gpt2": write_hf_gpt2(work / "hf-gpt2", shape), "alpaca": write_alpaca(work / "alpaca_data.json"),
             "hh-rlhf": write_hh(work / "hh-rlhf-train.jsonl.gz")}
    for cmd in gpu_commands():
        args = []
        for i, arg in enumerate(cmd):
            flag = cmd[i - 1] if i else ""
            if flag == "--init" and arg == "gpt2":
                arg = str(files["gpt2"])
            elif flag in ("--data", "--prompts") and arg in files:
                arg = str(files[arg])
            elif arg.startswith("checkpoints/"):
                arg = str(work / arg.removeprefix("checkpoints/"))
            args.append(arg)
        script = args[1]
        extra = FEW_STEPS[script] + (SMALL_BATCHES.get(script, []) if a.shape == "tiny" else [])
        run(rows, f"gpu.md {script.removesuffix('.py')}", python(*args[1:], *extra, "--overwrite", *dev),
            device=a.device, timeout=900)
    # 4. the collectives, on one rank (NCCL on CUDA, gloo on CPU), alone and inside training loops
    run(rows, "collectives (torchrun, 1 rank)", torchrun("bench/gpu_smoke.py", "--collectives-child", *dev),
        device=a.device, expect="collectives ok")
    run(rows, "torchrun train_sft", torchrun("train_sft.py", "--init", micro / "base", "--steps", "2",
        "--out", work / "sft-ddp", "--overwrite", "--skip-eval", *dev), device=a.device)
    run(rows, "torchrun train_ppo", torchrun("train_ppo.py", "--init", micro / "sft", "--rm", micro / "rm",
        "--iterations", "1", "--batch-size", "8", "--minibatch-size", "4", "--max-new-tokens", "8", "--skip-eval",
        "--base", "", "--out", work / "ppo-ddp", "--overwrite", *dev), device=a.device)
    # 5. --resume across devices: stopped on one, continued on the other
    other = "cpu" if a.device.startswith("cuda") else a.device
    for first, second in [(a.device, other), (other, a.device)]:
        out = work / f"resume-{first}-{second}".replace(":", "")
        grpo = ["train_grpo.py", "--init", micro / "sft", "--rm", micro / "rm", *MICRO_GRPO, "--out", out]
        ok = run(rows, f"resume {first} -> {second} (stop)", python(*grpo, "--stop-at", "1", "--overwrite",
                 "--device", first), device=a.device, expect="stopped at step 1")
        if ok:
            run(rows, f"resume {first} -> {second}", python(*grpo, "--resume", "--device", second), device=a.device,
                expect="re-seeded" if first != second else "resumed")
        if first == second:
            break

    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    table = [f"GPU smoke run on {name} (torch {torch.__version__}, --shape {a.shape}), "
             f"{time.time() - t_start:.0f} s in all", "",
             "| command | result | seconds | peak device memory |", "|---|---|---|---|"]
    table += [f"| {n} | {'ok' if ok else 'FAIL'} | {s:.0f} | {m} |" for n, ok, s, m, _, _ in rows]
    print("\n" + "\n".join(table))
    for n, ok, _, _, cmd, tail in rows:
        if not ok:
            print(f"\n--- FAIL: {n}\n$ {cmd}\n{tail}")
    if a.save:
        out = ROOT / "bench" / "results" / f"gpu_smoke_{name.replace(' ', '_')}.md"
        out.write_text("\n".join(table) + "\n\nCommands:\n" + "\n".join(f"- {n}: `{shlex.quote(c)}`" for n, _, _, _, c, _
                                                                      in rows) + "\n")
        print(f"wrote {out}")
    failed = [n for n, ok, *_ in rows if not ok]
    if failed:
        raise SystemExit(f"error: {len(failed)} of {len(rows)} failed: {', '.join(failed)}")
    print(json.dumps({"ok": len(rows), "seconds": round(time.time() - t_start)}))


if __name__ == "__main__":
    main()
