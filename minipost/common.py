"""
Small pieces every training script shares: device and dtype, seeding, the learning-rate schedule,
the optimizer, log lines, the next-token log-prob, loading and saving models, argparse checks.

Kept deliberately plain: each stage's math lives in its own script; this file is plumbing.
"""

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from minipost import checkpoint as ckpt
from minipost import distributed, lora
from minipost.download import DownloadError
from minipost.errors import UserError
from minipost.model import (GPT, OFFICIAL, CausalSelfAttention, GPTConfig, GPTScalar, is_pretrained_source,
                            is_sequence_classifier)
from minipost.tokenizer import Tokenizer

# -----------------------------------------------------------------------------
# argparse value checks: bad values are rejected before any model loads


def positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def nonneg_float(s: str) -> float:
    v = float(s)
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def unit_float(s: str) -> float:
    """A value in [0, 1] (gamma, lambda, probabilities)."""
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def fraction_float(s: str) -> float:
    """A fraction in [0, 1) (a held-out share: 1 would leave nothing to train on)."""
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def top_p_float(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"top_p must be in (0, 1], got {s}")
    return v


def positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def auto_int(s: str) -> int:
    """A positive integer, or -1 = the default the help string names (the model's context, half the block...)."""
    v = int(s)
    if v <= 0 and v != -1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or -1, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def seed_int(s: str) -> int:
    """A seed every generator accepts (torch takes 64 bits; stages add small offsets to it)."""
    v = int(s)
    if not 0 <= v < 2**62:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**62), got {s}")
    return v


def device_arg(s: str) -> str:
    """A device string torch understands (cpu, cuda, cuda:1, mps), or empty = autodetect."""
    if s:
        try:
            torch.device(s)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"unknown device {s!r}; use cpu, cuda, cuda:N or mps") from None
    return s


MIN_CONTEXT = 16  # tokens: room for a (left-truncated) prompt and the start of an answer


def stage_context(block_size: int, model_context: int, max_prompt_tokens: int = -1) -> tuple[int, int]:
    """(tokens per example, prompt budget) of a post-training stage, checked against the model's context.
    -1 = the model's context / half of it. Asking for more than the model holds is an error, not a silent cut."""
    if block_size > model_context:
        raise UserError(f"--block-size {block_size}: the model's context holds only {model_context} tokens")
    if 0 < block_size < MIN_CONTEXT:
        raise UserError(f"--block-size {block_size}: must be at least {MIN_CONTEXT} tokens "
                        "(or -1 = the model's context)")
    block = block_size if block_size > 0 else model_context
    if max_prompt_tokens >= block:
        raise UserError(f"--max-prompt-tokens {max_prompt_tokens}: must be below the {block}-token block "
                        "(the answer needs room too)")
    return block, max_prompt_tokens if max_prompt_tokens > 0 else block // 2


def add_common_args(p: argparse.ArgumentParser, out_dir: str, seed: int = 1337, save_every: int = 0):
    """Flags every stage has: output, resume/overwrite, device, dtype, seed, periodic saves."""
    p.add_argument("--out", default=out_dir, help="checkpoint directory to write")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--device", type=device_arg, default="",
                   help="cpu | cuda | cuda:N | mps; empty = cuda if there is one, else cpu (mps only when asked: fp32)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 autocast where the device computes bf16 natively (CUDA compute capability 8.0+, "
                        "CPUs with AMX/AVX512-BF16), else fp32 (with TF32 matmuls on CUDA)")
    p.add_argument("--fused-attn", action=argparse.BooleanOptionalAction, default=None,
                   help="attention with torch's fused scaled_dot_product_attention (flash / memory-efficient "
                        "kernels on a GPU) instead of the hand-written path; same results up to rounding. "
                        "Default: fused on CUDA (the hand-written path keeps a (B, heads, T, T) softmax per layer "
                        "for backward: gigabytes at GPT-2's 1,024 tokens), hand-written elsewhere")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="activation checkpointing: keep only each block's input in the forward pass and recompute "
                        "the rest in backward (less memory for long sequences / big models, ~30%% more compute)")
    p.add_argument("--seed", type=seed_int, default=seed, help="random seed (data order, init, sampling)")
    p.add_argument("--save-every", type=nonneg_int, default=save_every,
                   help="write a resumable checkpoint every N steps; 0 = only at the end")
    p.add_argument("--stop-at", type=int, default=-1,
                   help="tests of --resume: end the process after this step as a kill would; -1 = never")


def add_lora_args(p):
    """The LoRA flags every post-training stage has (the adapters themselves: lora.py)."""
    p.add_argument("--lora-rank", type=nonneg_int, default=0,
                   help="LoRA rank r of the adapters (only they train; the frozen reference is the same network "
                        "with adapters off); 0 = full fine-tuning")
    p.add_argument("--lora-alpha", type=positive_float, default=16.0,
                   help="LoRA alpha: the update is scaled by alpha / r")
    p.add_argument("--lora-targets", type=lora.parse_targets, default=["attn", "proj", "mlp"],
                   help=f"comma-separated layers to adapt in every block: {', '.join(lora.TARGETS)}")
    p.add_argument("--lora-save", choices=["merged", "adapters"], default="merged",
                   help="merged = W + (alpha/r) B A in plain weights (loads anywhere); adapters = A and B alone "
                        "(small; loading needs the base checkpoint named in config.json)")



# -----------------------------------------------------------------------------
# Device, dtype, randomness


MPS_MIN_TORCH = (2, 5)  # the oldest torch minipost runs on Apple's GPUs (2.4's autocast queries raise on "mps")


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def pick_device(requested: str = "") -> torch.device:
    """--device, or (empty) the best device that minipost has been run on: CUDA, else the CPU.

    Apple's GPU (MPS) is used only when asked for (--device mps): every stage is written for it (generators on
    the model's device, fp32, no collectives), but no Mac runs the project's tests, so an empty --device does
    not bet a student's first run on it. What MPS lacks is refused here, in one line, before anything loads:
    torch older than 2.5 and torchrun (pick_dtype refuses --dtype bf16 there).
    """
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            sys.exit(f"error: --device {requested} but torch sees no CUDA GPU (torch {torch.__version__}); "
                     "use --device cpu")
        if requested == "mps":
            if not torch.backends.mps.is_available():
                sys.exit("error: --device mps but MPS is not available; use --device cpu")
            if torch_version() < MPS_MIN_TORCH:
                sys.exit(f"error: --device mps needs torch >= {'.'.join(map(str, MPS_MIN_TORCH))}, this is torch "
                         f"{torch.__version__}; upgrade torch or use --device cpu")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def attention_for(device: torch.device, fused: bool | None) -> bool:
    """--fused-attn / --no-fused-attn, or (neither) the default: fused on CUDA, the hand-written path elsewhere."""
    return device.type == "cuda" if fused is None else fused


def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AMX or AVX512-BF16 matrix units, where bf16 matmuls are much faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(device: torch.device, requested: str = "auto") -> tuple[torch.dtype, str]:
    """(autocast dtype, reason). fp32 weights always; bf16 only as autocast for matmuls.

    On CUDA, "auto" means bf16 only where the GPU computes it natively (compute capability 8.0+: A100, RTX 30xx,
    H100, ...). A T4 or V100 emulates bf16 (torch reports it "supported"), which is slower than fp32; there
    we stay in fp32. fp32 matmuls on CUDA use TF32 tensor cores where the GPU has them (Ampere+): a 10-bit
    mantissa inside the matmul, fp32 everywhere else -- the precision PyTorch calls "high".
    """
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+; no effect on older GPUs
        major, minor = torch.cuda.get_device_capability(device)
        native = major >= 8
        if requested == "fp32":
            return torch.float32, "fp32 as requested" + (" (TF32 matmuls)" if native else "")
        if requested == "bf16":
            slow = "" if native else f" (emulated on compute capability {major}.{minor}: slow)"
            return torch.bfloat16, "bf16 autocast as requested" + slow
        if native:
            return torch.bfloat16, f"bf16 autocast: native on this GPU (compute capability {major}.{minor})"
        return torch.float32, (f"fp32: compute capability {major}.{minor} has no native bf16 "
                               f"(emulated bf16 is slower than fp32)")
    if requested == "fp32":
        return torch.float32, "fp32 as requested"
    if device.type == "cpu":
        if requested == "bf16":
            return torch.bfloat16, "bf16 autocast as requested"
        if cpu_has_fast_bf16():
            return torch.bfloat16, "bf16 autocast: this CPU has AMX/AVX512-BF16 matrix units"
        return torch.float32, "fp32: this CPU has no fast bf16 matrix units"
    if device.type == "mps":  # autocast on MPS: torch 2.4 raises, later versions may quietly run fp32 instead
        if requested == "bf16":
            sys.exit("error: --dtype bf16 is not supported on MPS (torch's autocast there raises or silently "
                     "stays fp32); use --dtype fp32")
        return torch.float32, "fp32 on mps (minipost runs MPS in fp32 only)"
    if requested == "bf16":
        return torch.bfloat16, "bf16 autocast as requested"
    return torch.float32, f"fp32 on {device.type}"


def autocast(device: torch.device, dtype: torch.dtype):
    """Context manager: bf16 autocast for matmuls (weights, softmax and losses stay fp32), or nothing."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps(np.random.get_state(legacy=False), default=lambda a: a.tolist()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from CUDA's own
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])  # (saved on a CPU, or resumed on a CPU: nothing to restore)
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = json.loads(state["numpy"])
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint64)
    np.random.set_state(np_state)


# -----------------------------------------------------------------------------
# Optimization


def lr_at(step: int, total: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to `min_ratio * lr` at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not on biases, LayerNorms -- or the scalar buffers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters; the per-tensor loop costs a visible share of a tiny step (docs/notes.md)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def set_lr(optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_finite(loss: torch.Tensor, step: int, what: str = "loss"):
    """Stop on a non-finite loss before it reaches the weights; the last checkpoint stays as it was."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(
            f"non-finite {what} ({loss.detach().float().flatten()[:4].tolist()}) at step {step}; "
            "training stopped, the last good checkpoint is left intact"
        )


# -----------------------------------------------------------------------------
# The one log-prob function every stage uses (SFT loss, sequence log-probs of RM/DPO/evaluation, PPO)


def pair_accuracy(margins, pairs: list, batch_size: int = 64) -> float:
    """Share of pairs whose margin (chosen minus rejected) is > 0. margins(start, chunk) -> (len(chunk),)."""
    right = 0
    for i in range(0, len(pairs), batch_size):
        right += int((margins(i, pairs[i : i + batch_size]) > 0).sum())
    return right / max(len(pairs), 1)


# -----------------------------------------------------------------------------
# Logging: one line per step on stdout, the same numbers in a JSONL file


class StepLogger:
    def __init__(self, path: Path, total_steps: int, append: bool = False):
        self.path = Path(path)
        self.write = distributed.is_main()  # under torchrun only rank 0 prints and writes the log
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.write and not append and self.path.exists():
            self.path.unlink()
        self.total = total_steps
        self.t0 = time.time()
        self.done_at_start = None

    def log(self, step: int, **metrics):
        """Print `step 0042/1000 | loss 2.3141 | ... | eta 1m20s` and append the metrics as JSON."""
        if not self.write:
            return
        if self.done_at_start is None:
            self.done_at_start = step
        elapsed = time.time() - self.t0
        done = step + 1 - self.done_at_start
        eta = elapsed / max(done, 1) * (self.total - step - 1)
        parts = [f"step {step:0{len(str(self.total))}d}/{self.total}"]
        for k, v in metrics.items():
            parts.append(f"{k} {_fmt(k, v)}")
        parts.append(f"eta {int(eta // 60)}m{int(eta % 60):02d}s")
        print(" | ".join(parts), flush=True)
        # log.jsonl of a checkpoint directory: log.jsonl.new until an --overwrite run's first save (ckpt.live_log)
        path = ckpt.live_log(self.path.parent) if self.path.name == ckpt.LOG_FILE else self.path
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, **{k: _plain(v) for k, v in metrics.items()}}) + "\n")


def _plain(v):
    return float(v) if isinstance(v, (torch.Tensor, np.floating)) else v


def _fmt(key, v):
    v = _plain(v)
    if isinstance(v, float):
        if key == "lr":
            return f"{v:.1e}"
        if key.endswith("ms"):
            return f"{v:.0f}"
        if key.endswith("tok/s"):
            return f"{v / 1000:.1f}k"
        return f"{v:.4f}"
    return str(v)


def read_jsonl_log(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_log(log_path, png_path, keys: list[str], title: str):
    """A PNG with one panel per metric key, read from a JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl_log(log_path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


# -----------------------------------------------------------------------------
# Models in and out of checkpoints


def load_model(source: str, device="cpu", kind: str | None = "lm", fused_attn: bool | None = None):
    """(model, tokenizer, config) from a checkpoint directory, or GPT-2 weights in Hugging Face's layout
    (an official name, a save_pretrained directory, a .safetensors file: whatever GPT.from_pretrained reads).

    A checkpoint's config.json says whether it holds a language model ("lm") or a scalar model
    ("scalar": reward / value). `kind="scalar"` on an lm checkpoint builds a scalar model whose
    backbone is the lm's (how the reward model starts from SFT). The default "lm" refuses a scalar checkpoint
    with a message (a reward model passed as --init); kind=None returns whatever the checkpoint holds.
    fused_attn: True / False picks the attention path (--fused-attn); None keeps the checkpoint's.
    """
    if is_pretrained_source(source):  # official weights by name, a save_pretrained directory, a .safetensors file
        # a GPT2ForSequenceClassification directory (e.g. `python -m minipost.export` of a reward model) is a scalar
        saved_kind = "scalar" if is_sequence_classifier(source) else "lm"
        if saved_kind == "scalar" and kind == "lm":
            raise ckpt.CheckpointError(f"{source} holds a scalar model, a language model is needed")
        try:
            model = GPTScalar.from_pretrained(source) if saved_kind == "scalar" else GPT.from_pretrained(source)
        except (DownloadError, FileNotFoundError, ValueError) as e:  # offline, no safetensors, a foreign config
            raise ckpt.CheckpointError(str(e)) from e
        config = {"stage": "pretrained", "kind": saved_kind, "model": model.config.to_dict(),
                  "tokenizer": {"vocab_size": model.config.vocab_size}, "init": source}
        tok = Tokenizer(model.config.vocab_size)
        if kind == "scalar" and saved_kind == "lm":
            scalar = GPTScalar(model.config)
            scalar.gpt.load_state_dict(model.state_dict())
            model = scalar
        return set_attention(model, fused_attn).to(device), tok, config
    if not ckpt.has_checkpoint(source):
        raise ckpt.CheckpointError(f"no checkpoint at {source} (run the previous stage, or pass a GPT-2 name: "
                                   f"{', '.join(OFFICIAL)})")
    state, config = ckpt.load_checkpoint(source)
    if config.get("lora", {}).get("saved") == "adapters":  # adapters alone: the base they adapt, then them
        return load_lora_adapters(source, state, config, device, kind, fused_attn)
    try:  # config.json is a text file anyone can edit: a field that cannot build the model is named as its fault
        gcfg = dropout_off(GPTConfig.from_dict(config["model"]))  # post-training compares log-probs: no dropout
        saved_kind = config.get("kind", "lm")
        kind = kind or saved_kind
        if kind == "lm":
            if saved_kind != "lm":
                raise ckpt.CheckpointError(f"{source} holds a {saved_kind} model, a language model is needed")
            model = GPT(gcfg)
            ckpt.load_into(model, state, source)
        elif saved_kind == "scalar":
            model = GPTScalar(gcfg)
            ckpt.load_into(model, state, source)
        else:  # a scalar model started from a language model's weights; the head is fresh
            model = GPTScalar(gcfg)
            ckpt.load_into(model.gpt, state, source)
        tok = Tokenizer(config.get("tokenizer", {}).get("vocab_size", gcfg.vocab_size))
    except ckpt.CheckpointError:
        raise
    except KeyError as e:
        raise ckpt.CheckpointError(f"{source}/config.json: missing field {e}") from e
    except (TypeError, ValueError, AssertionError) as e:
        raise ckpt.CheckpointError(f"{source}/config.json: {e}") from e
    return set_attention(model, fused_attn).to(device), tok, config


def load_lora_adapters(source, state, config, device, kind, fused_attn):
    """A checkpoint written with --lora-save adapters: the base model it names, LoRA applied, the adapters loaded."""
    spec = config["lora"]
    model, tok, _ = load_model(spec["base"], device, kind=kind or config.get("kind", "lm"), fused_attn=fused_attn)
    lora.apply_lora(model, spec["rank"], spec["alpha"], spec["targets"], train_also=("head",))
    try:
        lora.load_adapters(model, state)
    except KeyError as e:
        raise ckpt.CheckpointError(f"{source}: adapters do not fit the base {spec['base']}: {e}") from e
    return model.to(device), tok, config


def setup_training(model, args, train_also: tuple[str, ...] = ()):
    """The model that trains: --lora-rank r > 0 puts adapters on the targeted layers and freezes everything else
    except `train_also` (lora.py); --grad-checkpoint recomputes each block's activations in backward instead of
    storing them (GPT.grad_checkpoint). Prints trainable and total parameters."""
    for m in model.modules():
        if isinstance(m, GPT):
            m.grad_checkpoint = getattr(args, "grad_checkpoint", False)
    rank = getattr(args, "lora_rank", 0)
    if rank > 0:
        lora.apply_lora(model, rank, args.lora_alpha, args.lora_targets, train_also)
    trainable, total = lora.count_params(model)
    print(f"parameters: {trainable / 1e6:.3f}M trainable of {total / 1e6:.2f}M ({100 * trainable / total:.2f}%)"
          + (f"; LoRA r={rank} alpha={args.lora_alpha:g} on {','.join(args.lora_targets)}" if rank > 0 else ""))
    return model


def synchronize(device):
    """Wait until the device has done the work queued on it. CUDA and MPS run asynchronously: the Python line
    after a forward returns before the GPU has finished, so a clock read without this times the launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds_since(t0: float, device) -> float:
    """Wall-clock seconds since time.time() was t0, once the device's queued work is done."""
    synchronize(device)
    return time.time() - t0


def peak_memory_mb(device) -> float:
    """Peak memory of this process so far, in MiB: CUDA's allocator peak on a GPU, else the peak resident set
    (Linux: VmHWM of this process image; ru_maxrss would include the peak of the parent that started it).
    MPS keeps no peak counter: there it is the larger of the process's peak resident set and the memory the
    Metal driver holds now (unified memory: a lower bound of the true peak)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if torch.device(device).type == "mps":
        return max(torch.mps.driver_allocated_memory() / 2**20, peak_memory_mb("cpu"))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # macOS reports bytes


def set_attention(model: torch.nn.Module, fused: bool | None) -> torch.nn.Module:
    """Switch every attention layer of a GPT or GPTScalar to the fused (True) or hand-written (False) path;
    None leaves it as it is. The config follows, so a saved checkpoint says which path trained it."""
    if fused is not None:
        for module in model.modules():
            if isinstance(module, CausalSelfAttention):
                module.fused = fused
            if isinstance(module, GPT):
                module.config.fused_attn = fused
    return model


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """A reference / reward model: eval mode, no gradients, never in an optimizer."""
    model.eval()
    model.requires_grad_(False)
    return model


def save_stage(out_dir, model, *, stage: str, kind: str, tokenizer: Tokenizer, args, metrics: dict,
               train_state: dict | None = None, extra: dict | None = None):
    """Write a checkpoint directory: weights, config.json (model config, tokenizer, args, metrics), train state."""
    cfg = model.config
    if lora.has_adapters(model):  # merged weights (default) or the adapters alone, and how to rebuild the model
        how = getattr(args, "lora_save", "merged")
        extra = {**(extra or {}), "lora": lora.lora_config(args, getattr(args, "init", ""))}
        model = lora.SaveView(model, how)
    config = {
        "stage": stage,
        "kind": kind,
        "model": cfg.to_dict(),
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id},
        "args": {k: v for k, v in vars(args).items()} if args is not None else {},
        "metrics": metrics,
        **(extra or {}),
    }
    ckpt.save_checkpoint(out_dir, model, config, train_state)


class Checkpointer:
    """Periodic saves and exact --resume for one training loop, so the loop itself needs one line.

        def save(metrics, train_state):          # the stage's own checkpoint: weights + config + state
            common.save_stage(args.out, model, ..., metrics=metrics, train_state=train_state)
        saver = common.Checkpointer(args, args.steps, model, save, optimizer=optimizer, data_rng=data_rng)
        start = saver.start()                    # 0, or where --resume continues
        log = saver.logger(args.steps)
        for step in range(start, args.steps):
            ...
            saver.step_done(step + 1)            # saves every --save-every steps
        saver.save(args.steps, final_metrics)

    Exact means bitwise: an interrupted and resumed run ends with the weights of an uninterrupted one. So
    the train state holds everything the rest of the run depends on -- each named part's state (optimizers'
    moments, other models, generators' positions, small objects such as an adaptive KL coefficient) and the
    global random states -- and the log keeps each step once (ckpt.start_log drops the rows logged after the
    last checkpoint). The model passed first is the one in model.safetensors; it is restored from there.
    save=None: a run that neither saves, resumes nor logs (DPO's short beta-sweep runs).
    """

    def __init__(self, args, total: int, model, save, **parts):
        self.out, self.total, self.model, self.write, self.parts = args.out, total, model, save, parts
        self.every, self.stop_at, self.resume = args.save_every, args.stop_at, args.resume
        self.start_step = 0

    def train_state(self, step: int) -> dict:
        state = {"step": step, "rng": rng_state()}
        if lora.has_adapters(self.model):  # model.safetensors holds merged weights: the adapters travel here
            state["lora_adapters"] = lora.adapter_state_dict(self.model)
        for name, part in self.parts.items():
            if isinstance(part, torch.Generator):  # a CUDA generator's state is not a CPU one's: say whose it is
                state[name] = {"device": part.device.type, "state": part.get_state()}
            elif hasattr(part, "state_dict"):
                state[name] = part.state_dict()
            else:  # a small object of numbers (e.g. an adaptive KL coefficient)
                state[name] = dict(vars(part))
        return state

    def start(self) -> int:
        """Restore everything from the checkpoint in --out when resuming; the step to start at (0 otherwise)."""
        if not self.resume or self.write is None:
            return 0
        state = ckpt.load_train_state(self.out)
        if state.get("step", 0) > self.total:  # else the loop would not run and the save would misstate the step
            raise ckpt.CheckpointError(f"--resume: {self.out} is at step {state['step']}, past the {self.total} "
                                       "steps asked for; ask for more steps to continue it")
        if lora.has_adapters(self.model):  # the frozen weights are --init's; the adapters come from the state
            if "lora_adapters" not in state:
                raise ckpt.CheckpointError(f"{self.out}/{ckpt.STATE_FILE} holds no LoRA adapters: it was not "
                                           "written by a --lora-rank run")
            lora.load_adapters(self.model, state["lora_adapters"])
        else:
            state_dict, _ = ckpt.load_checkpoint(self.out)
            ckpt.load_into(self.model, state_dict, self.out)
        missing = [name for name in ["step", "rng", *self.parts] if name not in state]
        if missing:
            raise ckpt.CheckpointError(f"{self.out}/{ckpt.STATE_FILE} lacks {missing}: it was written by another "
                                       "stage or an older minipost, and cannot continue this run exactly")
        for name, part in self.parts.items():
            if isinstance(part, torch.Generator):
                restore_generator(part, state[name], name, state["step"])
            elif hasattr(part, "load_state_dict"):
                part.load_state_dict(state[name])
            else:
                vars(part).update(state[name])
        set_rng_state(state["rng"])
        self.start_step = state["step"]
        print(f"resumed {self.out} at step {self.start_step}")
        return self.start_step

    def logger(self, total: int) -> "StepLogger | None":
        """The step log, continued where the checkpoint stopped (each step once), or started afresh."""
        if self.write is None:
            return None
        if distributed.is_main():
            ckpt.start_log(self.out, self.start_step)
        return StepLogger(Path(self.out) / ckpt.LOG_FILE, total, append=True)

    def save(self, step: int, metrics: dict):
        if self.write is not None and distributed.is_main():  # under torchrun only rank 0 writes checkpoints
            self.write(metrics, self.train_state(step))

    def step_done(self, step: int):
        """After `step` steps: a checkpoint every --save-every steps. --stop-at (tests) ends the process
        here as a kill would: nothing saved beyond the periodic checkpoints, no cleanup run."""
        # (the last step's save is the stage's own, with its final metrics)
        if self.every > 0 and step % self.every == 0 and step < self.total:
            self.save(step, {"unfinished_at_step": step})  # what config.json says of a mid-run checkpoint
        if step == self.stop_at:
            print(f"stopped at step {step} (--stop-at, as if killed); continue with --resume", flush=True)
            sys.stderr.flush()
            os._exit(0)


def restore_generator(gen: torch.Generator, saved, name: str, step: int):
    """Put a generator back where a checkpoint left it. Saved on another kind of device (a run started on a GPU
    and resumed on a CPU, or the reverse), its state cannot be loaded -- a CUDA generator's state is a seed and
    an offset, a CPU one's a Mersenne-Twister table -- so the generator is re-seeded from its seed and the step
    instead: the run continues, deterministically, but its samples from here on differ from an uninterrupted
    run's (said in one line). Checkpoints of older minipost versions hold the bare state."""
    device, state = (saved["device"], saved["state"]) if isinstance(saved, dict) else (gen.device.type, saved)
    if device == gen.device.type:
        gen.set_state(state)
        return
    gen.manual_seed(gen.initial_seed() + 1000003 * step)
    print(f"resume: {name} was saved on {device} and this run is on {gen.device.type}: re-seeded from its seed and "
          f"step {step}, so the samples after step {step} differ from an uninterrupted run's")


def dropout_off(config: GPTConfig) -> GPTConfig:
    """Post-training compares log-probs across models and passes: dropout must be off everywhere."""
    d = config.to_dict()
    d["dropout"] = 0.0
    return GPTConfig.from_dict(d)


def print_config(title: str, args, extra: dict | None = None):
    print(f"== {title} ==")
    for k, v in {**vars(args), **(extra or {})}.items():
        print(f"  {k:>22}: {v}")
    sys.stdout.flush()


def fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")
