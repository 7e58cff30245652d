"""
Measured matrix-multiply peak: GFLOP/s of square matmuls (n x n) @ (n x n), fp32 and bf16, best of reps.

This is the denominator of model FLOPs utilization (MFU) in train_throughput.py: the fraction of what
this machine's matmul unit actually delivers (not the vendor's datasheet number) that training reaches.
A square matmul of size n costs 2 n^3 FLOPs (n^3 multiply-adds). On CUDA the device's number.

    python bench/matmul_peak.py            # sizes 1024, 2048; writes bench/results/matmul_peak.json
    python bench/matmul_peak.py --quick    # a second or two, to check it runs

Importable: `from matmul_peak import measure_peak` (with bench/ on sys.path).
"""

import argparse

import torch

import benchlib


def measure_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s over `reps` timed (n x n) @ (n x n) matmuls in `dtype` on `device` (one untimed warmup).
    Best, not median: the peak is what the hardware can do; interference only slows it down."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warmup: thread pool start-up, kernel selection
    best = min(benchlib.timed(lambda: torch.mm(a, b), device) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def peaks(device: torch.device, dtypes: list[torch.dtype], sizes: list[int], reps: int) -> dict:
    """{dtype name: {"gflops": best over sizes, "by_size": {n: GFLOP/s}}}."""
    out = {}
    for dtype in dtypes:
        by_size = {n: measure_peak(device, dtype, n, reps) for n in sizes}
        out[benchlib.dtype_name(dtype)] = {"gflops": max(by_size.values()), "by_size": by_size}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "matmul_peak")
    p.add_argument("--sizes", default="1024,2048", help="comma-separated square sizes n")
    p.add_argument("--reps", type=int, default=10, help="timed matmuls per size and dtype (the best is kept)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = args.reps
    if args.quick:
        sizes, reps = [512, 1024], 3
    benchlib.set_threads(args.threads)
    device = benchlib.common.pick_device(args.device)
    # bf16 is always measured: the number says whether bf16 autocast is worth it on this machine
    dtypes = [torch.float32, torch.bfloat16]
    info = benchlib.machine_info(device)
    print(f"matmul peak on {device} ({info['cpu']}, {info['torch_threads']} threads), sizes {sizes}, best of {reps}")
    res = peaks(device, dtypes, sizes, reps)
    rows = [{"dtype": d, **{f"n{n}": g for n, g in r["by_size"].items()}, "best": r["gflops"]} for d, r in res.items()]
    benchlib.print_table(rows, [("dtype", "dtype", "s")] + [(f"n{n}", f"n={n} GFLOP/s", ".1f") for n in sizes]
                         + [("best", "best GFLOP/s", ".1f")])
    benchlib.write_json(benchlib.out_path(args, "matmul_peak"), {"benchmark": "matmul_peak", "quick": args.quick, "machine": info,
                                   "sizes": sizes, "reps": reps, "peak": res})
    return res


if __name__ == "__main__":
    main()
