"""
Plumbing the benchmark scripts share: machine info, timing, the median over alternating rounds, peak
memory in a fresh subprocess, a copy of minipost's GPT into `transformers.GPT2LMHeadModel`, tables, JSON.

Benchmarks, not tests: nothing here asserts a speed. `transformers` is optional; every script prints
that the comparison is skipped when it is not importable.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere: minipost must import
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from minipost import common  # noqa: E402

# -----------------------------------------------------------------------------
# Machine, device, dtypes


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": common.cpu_has_fast_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_avg_1m": os.getloadavg()[0],  # > cores: the machine was busy, numbers are noisy
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench_dtypes(device: torch.device, requested: str) -> list[torch.dtype]:
    """--dtypes auto = fp32, plus bf16 autocast where it is fast (CUDA with bf16, CPUs with AMX/AVX512-BF16)."""
    if requested == "fp32":
        return [torch.float32]
    if requested == "bf16":
        return [torch.bfloat16]
    fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and common.cpu_has_fast_bf16()
    return [torch.float32, torch.bfloat16] if fast else [torch.float32]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def add_bench_args(p, name: str):
    """The flags every benchmark has."""
    p.add_argument("--quick", action="store_true", help="tiny iteration counts and shapes: checks that the script runs (numbers meaningless)")
    p.add_argument("--device", default="", help="cpu | cuda | cuda:N | mps; empty = autodetect cuda > mps > cpu")
    p.add_argument("--out", default="", help=f"JSON file to write; default {RESULTS_DIR.name}/{name}.json "
                   f"({RESULTS_DIR.name}/quick/{name}.json with --quick, so a check never overwrites real results)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (intra-op), the same for every implementation; 0 = torch's default")


def results_dir(quick: bool) -> Path:
    """bench/results/ for real runs; bench/results/quick/ for --quick checks (numbers meaningless, not committed)."""
    return RESULTS_DIR / "quick" if quick else RESULTS_DIR


def out_path(args, name: str) -> Path:
    """Where a benchmark writes its JSON: --out, or NAME.json in results_dir(--quick)."""
    return Path(args.out) if args.out else results_dir(args.quick) / f"{name}.json"


def set_threads(n: int):
    """torch.set_num_threads(n) when n > 0. Every implementation in a run, and every memory child (see
    measure_in_child), then runs with the same thread count, which machine_info records."""
    if n > 0:
        torch.set_num_threads(n)


# -----------------------------------------------------------------------------
# Timing


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds one call of fn() takes, with the device synchronized on both sides."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(runners: dict, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Call each runner once per round, in turn (A, B, C, A, B, C, ...): a machine that slows down or
    speeds up during the benchmark (other jobs, thermal limits) then affects every runner alike, and the
    median over rounds drops the outliers. Returns {name: [seconds per round]}."""
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            times[name].append(timed(fn, device))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# -----------------------------------------------------------------------------
# Peak memory: one fresh process per configuration


def peak_memory_now(device: torch.device) -> float:
    """MiB: the CUDA allocator's peak on a GPU, else this process's peak resident set size.

    On CPU, tracemalloc does not see torch's allocations and the peak only grows inside a long-lived
    process, so each configuration runs in its own process (see `measure_in_child`). Linux gotcha:
    ru_maxrss survives fork + exec -- a child starts with its parent's peak (here, a parent holding a
    124M model) -- so on Linux we read VmHWM from /proc/self/status, the high-water mark of this
    process image alone; elsewhere ru_maxrss."""
    return common.peak_memory_mb(device)  # CUDA allocator peak, else this process image's VmHWM


def reset_peak_memory(device: torch.device):
    """Start the peak over from the memory in use now (weights included): building a model briefly holds two
    copies of its weights (the random-init minipost model and its copy), which is not what is measured.
    CUDA: reset_peak_memory_stats. Linux: writing 5 to /proc/self/clear_refs sets VmHWM to the current RSS.
    Elsewhere nothing (the peak may then be the build's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child_report(result: dict):
    """Last line of a child's stdout: the JSON the parent reads."""
    print("CHILD_RESULT " + json.dumps(result), flush=True)


def measure_in_child(script: str, child_args: list[str], timeout: float = 1800) -> dict | None:
    """Run `python bench/<script> --child ...` in a fresh interpreter; return its CHILD_RESULT dict
    (or None with the error printed: a failed memory measurement must not lose the timing results)."""
    cmd = [sys.executable, str(BENCH_DIR / script), *child_args, "--threads", str(torch.get_num_threads())]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  memory child timed out: {' '.join(child_args)}")
        return None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("CHILD_RESULT "):
            return json.loads(line[len("CHILD_RESULT "):])
    print(f"  memory child failed (rc {proc.returncode}): {' '.join(child_args)}\n{proc.stderr[-2000:]}")
    return None


# -----------------------------------------------------------------------------
# transformers: the same model, the same weights


def import_transformers():
    """The transformers module, or None (with the reason printed): the comparison is then skipped."""
    try:
        import transformers

        return transformers
    except ImportError as e:
        print(f"transformers is not importable ({e}): the comparison with transformers is skipped")
        return None


def hf_copy(model, attn_implementation: str = "eager"):
    """A `transformers.GPT2LMHeadModel` with minipost's config and weights, dropout 0, on model's device.

    Hugging Face stores c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj as Conv1D weights of shape (in, out);
    nn.Linear holds (out, in): those four are transposed. Everything else copies key by key.
    Returns None when this transformers does not support `attn_implementation`.
    """
    import transformers

    cfg = model.config
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        activation_function="gelu_new",  # what GPT-2's own config.json says: tanh GELU, as ours
        bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1,  # minipost's EOS is the last id
    )
    try:
        hf = transformers.GPT2LMHeadModel._from_config(hf_cfg, attn_implementation=attn_implementation)
    except (ValueError, ImportError) as e:
        print(f"transformers: attn_implementation={attn_implementation!r} unsupported here ({e}); skipped")
        return None
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    ours = model.state_dict()
    theirs = hf.state_dict()
    with torch.no_grad():
        for key, param in theirs.items():
            if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of older versions
                continue
            w = ours[key]
            param.copy_(w.t() if key.endswith(transposed) else w)
    hf.config.use_cache = True
    return hf.to(next(model.parameters()).device)


# -----------------------------------------------------------------------------
# Output


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]):
    """columns: (key, header, format). Missing values print as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path, payload: dict):
    if "machine" in payload:  # the load at the end too: a job that started mid-run shows up here
        payload["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
