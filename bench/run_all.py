"""
Run every benchmark (each in its own process, one after the other) and write bench/results/summary.md:
the targets of the issue checked against the numbers, then one table per benchmark.

    python bench/run_all.py                  # full: tens of minutes on a 2-core CPU; run on a quiet machine
    python bench/run_all.py --quick          # every script with --quick (numbers meaningless; in bench/results/quick/)
    python bench/run_all.py --summary-only   # rebuild summary.md from the JSON files already in bench/results/
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import benchlib

SCRIPTS = ["matmul_peak.py", "train_throughput.py", "generate_throughput.py", "ppo_breakdown.py", "trl_peer.py",
           "trl_grpo.py", "compile_check.py"]

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--device", default="", help="passed to every script (empty = autodetect)")
    p.add_argument("--threads", type=int, default=0, help="passed to every script: torch CPU threads (0 = torch's default)")
    p.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    p.add_argument("--summary-only", action="store_true", help="do not run anything; summarize the existing JSON")
    p.add_argument("--out", default="", help="markdown file to write; default bench/results/summary.md "
                   "(bench/results/quick/summary.md with --quick)")
    return p.parse_args(argv)


def cpu_busy_seconds() -> float | None:
    """CPU seconds every process on this machine has spent busy since boot (Linux /proc/stat), or None."""
    try:
        fields = open("/proc/stat").readline().split()[1:]  # user nice system idle iowait irq softirq steal ...
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def others_share(script_run) -> float | None:
    """Run script_run(); return the share of the machine's CPU time (0..1) that OTHER processes used meanwhile:
    all busy CPU time minus our children's, over wall time x cores. A contention measure that, unlike the
    load average, does not lag by a minute."""
    busy0, own0, t0 = cpu_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    script_run()
    busy1, own1, wall = cpu_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    if busy0 is None:
        return None
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    return max(0.0, (busy1 - busy0 - own) / (wall * os.cpu_count()))


def load(name: str, quick: bool = False) -> dict | None:
    path = benchlib.results_dir(quick) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def md_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(k) is None else format(r[k], f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def targets(train: dict | None, gen: dict | None) -> list[dict]:
    """The issue's targets, one row per (shape, dtype, batch) where it applies."""
    out = []
    if train:
        for r in train["rows"]:
            where = f"{r['shape']} B={r['B']} T={r['T']} {r['dtype']}"
            if r["impl"] == "minipost-fused":
                out.append({"target": "training, fused >= 1.0x transformers", "where": where,
                            "measured": r["vs_hf"] and f"{r['vs_hf']:.2f}x", "met": check(r["vs_hf"] and r["vs_hf"] >= 1.0)})
            if r["impl"] == "minipost":
                out.append({"target": "training, hand-written within 1.5x of fused", "where": where,
                            "measured": f"{1 / r['vs_fused']:.2f}x slower", "met": check(1 / r["vs_fused"] <= 1.5)})
            if r["shape"] == "gpt2" and r["impl"].startswith("minipost"):
                out.append({"target": f"training >= 50% of matmul peak ({r['impl']})", "where": where,
                            "measured": f"{r['mfu']:.1%} MFU", "met": check(r["mfu"] >= 0.5)})
    if gen:
        for r in gen["rows"]:
            if r["impl"] == "minipost" and r["batch"] in (1, 32):
                where = f"{r['shape']} B={r['batch']} {r['dtype']}"
                cpu = gen["machine"]["device"] == "cpu"
                out.append({"target": "KV-cache generation >= 2x transformers.generate" + ("" if cpu else " (CPU target)"),
                            "where": where, "measured": r["vs_hf"] and f"{r['vs_hf']:.2f}x",
                            "met": check(r["vs_hf"] and r["vs_hf"] >= 2.0)})
    return out


def trl_rows(quick: bool = False) -> tuple[list[dict], dict | None]:
    """Rows of trl_peer.json and of any trl_peer_*.json beside it (a shape run on its own, e.g. --shapes gpt2
    --out results/trl_peer_gpt2.json), and the first file's payload (machine, args)."""
    files = sorted(f for f in benchlib.results_dir(quick).glob("trl_peer*.json") if f.name != "trl_peer_memory.json")
    payloads = [json.loads(f.read_text()) for f in files]
    rows = [{**r, "file": f.name, "threads": p["machine"]["torch_threads"]} for f, p in zip(files, payloads) for r in p["rows"]]
    memory = load("trl_peer_memory", quick)  # peak memory measured on its own (trl_peer.py --memory-only)
    for m in (memory or {}).get("rows", []):
        for r in rows:
            if (r["task"], r["shape"], r["dtype"]) == (m["task"], m["shape"], m["dtype"]) and r.get("peak_mib_minipost") is None:
                r.update(peak_mib_minipost=m["peak_mib_minipost"], peak_mib_trl=m["peak_mib_trl"])
    return rows, (payloads[0] if payloads else None)


def trl_section(quick: bool = False) -> list[str]:
    """Markdown: the TRL comparison (targets, table, first losses) and torch.compile's check."""
    rows, first = trl_rows(quick)
    parts = []
    if rows:
        checks = [{"target": f"{r['task'].upper()} step <= 1/1.5 of TRL's", "where": f"{r['shape']} B={r['batch']} {r['dtype']}",
                   "measured": f"{r['speedup']:.2f}x", "met": check(r["speedup"] >= 1.5)} for r in rows]
        loads = "; ".join(f"{p['machine']['load_avg_1m']:.1f} -> {p['machine'].get('load_avg_1m_end', float('nan')):.1f}"
                          for p in [first])
        parts += ["", f"## minipost vs TRL {first['machine'].get('trl')} (trl_peer.py)", "",
                  "The same weights (checked: max |fp32 output difference|), batches, optimizer, schedule and dtype; "
                  "ms per optimizer step = median of the timed steps, the two sides alternating step by step "
                  f"(torch threads: {', '.join(sorted({str(r['threads']) for r in rows}))}; load average {loads}). "
                  "speedup = TRL ms / minipost ms.", "",
                  md_table(checks, [("target", "target", "s"), ("where", "where", "s"), ("measured", "measured", "s"), ("met", "met", "s")]),
                  "", md_table(rows, [("task", "task", "s"), ("shape", "shape", "s"), ("batch", "B", "d"), ("dtype", "dtype", "s"),
                                      ("ms_minipost", "minipost ms", ",.0f"), ("ms_trl", "TRL ms", ",.0f"), ("speedup", "speedup", ".2f"),
                                      ("fp32_max_diff", "fp32 output diff", ".1e"), ("peak_mib_minipost", "minipost MiB", ",.0f"),
                                      ("peak_mib_trl", "TRL MiB", ",.0f")]),
                  "", "First steps' losses (same weights, same batches; the first steps are the untimed warm-up):", "",
                  md_table([{"where": f"{r['task']} {r['shape']} {r['dtype']}",
                             "minipost": ", ".join(f"{x:.5f}" for x in r["loss_minipost"][:4]),
                             "trl": ", ".join(f"{x:.5f}" for x in r["loss_trl"][:4]), "diff": r["loss_max_diff"]} for r in rows],
                           [("where", "task", "s"), ("minipost", "minipost", "s"), ("trl", "TRL", "s"), ("diff", "max diff (all steps)", ".1e")])]
    comp = load("compile_check", quick)
    if comp:
        parts += ["", "## torch.compile (compile_check.py)", "",
                  f"Inductor on {comp['machine']['device']}, {comp['machine']['torch_threads']} torch threads, cold cache; "
                  "compile s = first compiled call minus one compiled step; break-even = compile s / ms saved per step.", "",
                  md_table(comp["rows"], [("case", "case", "s"), ("dtype", "dtype", "s"), ("eager_ms", "eager ms", ",.1f"),
                                          ("compiled_ms", "compiled ms", ",.1f"), ("speedup", "speedup", ".2f"),
                                          ("compile_s", "compile s", ",.1f"), ("break_even_steps", "break-even steps", ",.0f")])]
    return parts


def grpo_section(quick: bool = False) -> list[str]:
    """Markdown: the GRPO iteration against TRL's GRPOTrainer (trl_grpo.py): the target, then the phase table."""
    g = load("trl_grpo", quick)
    if not g:
        return []
    st, m = g["settings"], g["machine"]
    check_row = {"target": "GRPO iteration >= 2x faster than TRL's GRPOTrainer", "where": f"{st['source']}, fp32",
                 "measured": f"{g['speedup']:.2f}x", "met": check(g["speedup"] >= 2.0)}
    mem = (f" Peak memory of two iterations above the resident model: minipost {g['peak_mib_minipost']:,.0f} MiB, "
           f"TRL {g['peak_mib_trl']:,.0f} MiB." if g.get("peak_mib_minipost") and g.get("peak_mib_trl") else "")
    return ["", f"## GRPO iteration vs TRL {m.get('trl')} GRPOTrainer (trl_grpo.py)", "",
            f"train_grpo.py's defaults with the verifier reward ({st['prompts_per_step']} prompts x {st['group_size']} "
            f"samples, <= {st['max_new_tokens']} new tokens, {st['epochs']} epochs of minibatches of "
            f"{st['minibatch_size']}, no KL), the same weights (fp32 logit diff {st['fp32_max_logit_diff']:.1e}), "
            f"prompts, reward and optimizer; seconds per iteration, median of {g['args']['rounds']} rounds alternating "
            f"iteration by iteration ({m['torch_threads']} torch threads; load average {m['load_avg_1m']:.1f} -> "
            f"{m.get('load_avg_1m_end', float('nan')):.1f}).{mem}", "",
            md_table([check_row], [("target", "target", "s"), ("where", "where", "s"), ("measured", "measured", "s"),
                                   ("met", "met", "s")]),
            "", md_table(g["rows"], [("phase", "phase", "s"), ("minipost", "minipost s", ",.3f"),
                                     ("trl", "TRL s", ",.3f"), ("ratio", "TRL / minipost", ".2f")])]


def summary(quick: bool = False) -> str:
    peak, train, gen, ppo = (load(n, quick) for n in ("matmul_peak", "train_throughput", "generate_throughput", "ppo_breakdown"))
    any_result = next((r for r in (peak, train, gen, ppo) if r), None)
    if any_result is None:
        raise SystemExit(f"no results in {benchlib.results_dir(quick)}; run the benchmarks first")
    m = any_result["machine"]
    loads = ", ".join(f"{r['benchmark']} {r['machine']['load_avg_1m']:.1f} -> {r['machine'].get('load_avg_1m_end', float('nan')):.1f}"
                      for r in (peak, train, gen, ppo) if r)
    run = load("run_all", quick)
    if run and run.get("others_cpu_share"):
        loads += "; CPU share used by other processes during each script: " + ", ".join(
            f"{k.removesuffix('.py')} {v:.0%}" for k, v in run["others_cpu_share"].items() if v is not None)
    parts = ["# minipost benchmarks", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), device {m['device']}"
             f"{', ' + m['gpu'] if m.get('gpu') else ''}; torch {m['torch']}, transformers {m.get('transformers')}; "
             f"{m['time']}. 1-minute load average at the start -> end of each script: {loads}"
             f"{' (above the core count: the machine was shared, distrust absolute numbers)' if any(r and max(r['machine']['load_avg_1m'], r['machine'].get('load_avg_1m_end', 0)) > m['cores'] for r in (peak, train, gen, ppo)) else ''}."]
    if run:
        parts += ["", f"`run_all.py{' --quick' if run['quick'] else ''}` took {run['seconds'] / 60:.1f} minutes ({run['started']})."]
    if any(r and r.get("quick") for r in (peak, train, gen, ppo)):
        parts += ["", "**Some results come from `--quick` runs: smaller shapes and counts; the numbers do not mean much.**"]
    parts += ["", "## Targets", "", md_table(targets(train, gen), [("target", "target", "s"), ("where", "where", "s"),
                                                                 ("measured", "measured", "s"), ("met", "met", "s")])]
    if peak:
        rows = [{"dtype": d, "gflops": r["gflops"]} for d, r in peak["peak"].items()]
        parts += ["", "## Matmul peak (matmul_peak.py)", "", f"Square matmuls, sizes {peak['sizes']}, best of {peak['reps']}.", "",
                  md_table(rows, [("dtype", "dtype", "s"), ("gflops", "GFLOP/s", ",.1f")])]
    if train:
        parts += ["", "## Training throughput (train_throughput.py)", "",
                  "Forward + backward + AdamW, median of alternating rounds. vs hf: over the faster transformers "
                  "implementation; vs fused: over minipost-fused; MFU: (6N + 12LTd) x tok/s over the matmul peak "
                  "of the same dtype; peak MiB: above the post-import footprint, fresh process.", "",
                  md_table(train["rows"], [("shape", "shape", "s"), ("B", "B", "d"), ("T", "T", "d"), ("dtype", "dtype", "s"),
                                           ("impl", "impl", "s"), ("tok_s", "tok/s", ",.0f"), ("ms_step", "ms/step", ",.1f"),
                                           ("vs_hf", "vs hf", ".2f"), ("vs_fused", "vs fused", ".2f"), ("mfu", "MFU", ".1%"),
                                           ("peak_mib", "peak MiB", ",.0f")])]
    if gen:
        parts += ["", "## Generation throughput (generate_throughput.py)", "",
                  f"Greedy, prompt {gen['args']['prompt_len']} tokens, no EOS stop; new tok/s = batch x new tokens / "
                  "median time. The no-cache path decodes fewer tokens (normalized, optimistic).", "",
                  md_table(gen["rows"], [("shape", "shape", "s"), ("batch", "B", "d"), ("dtype", "dtype", "s"), ("impl", "impl", "s"),
                                         ("new_tokens", "new", "d"), ("tok_s", "new tok/s", ",.1f"), ("vs_hf", "vs hf", ".2f"),
                                         ("same_tokens_as_hf", "same tokens", ""), ("peak_mib", "peak MiB", ",.0f")])]
    if ppo:
        cols = [("phase", "phase", "s")]
        for d in ppo["results"]:
            cols += [(f"{d}_s", f"{d} s", ".3f"), (f"{d}_pct", "share", ".1%")]
        pa = next(iter(ppo["results"].values()))["ppo_args"]
        mem = ", ".join(f"{d} {r['delta_mib']:,.0f} MiB" for d, r in ppo["results"].items())
        parts += ["", "## PPO iteration breakdown (ppo_breakdown.py)", "",
                  f"Random-init `{ppo['preset']}` models, train_ppo sizes {pa}; train_ppo.py's default dtype here: "
                  f"{ppo['train_ppo_dtype']}. Peak memory: {mem}.", "",
                  md_table([{**r, "phase": r["phase"].strip()} for r in ppo["rows"]], cols)]
    parts += trl_section(quick)
    parts += grpo_section(quick)
    return "\n".join(parts) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if not args.summary_only:
        t0, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
        others = {}
        only = [s if s.endswith(".py") else s + ".py" for s in args.only.split(",") if s]
        for script in SCRIPTS:
            if only and script not in only:
                continue
            cmd = [sys.executable, str(benchlib.BENCH_DIR / script)] + (["--quick"] if args.quick else [])
            cmd += ["--device", args.device] if args.device else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            print(f"\n=== {' '.join(cmd[1:])}", flush=True)
            result = {}
            others[script] = others_share(lambda: result.update(rc=subprocess.run(cmd).returncode))
            print(f"other processes used {others[script]:.0%} of the CPU during {script}" if others[script] is not None else "")
            if result["rc"] != 0:
                print(f"{script} failed with exit code {result['rc']}; continuing")
        if not args.only:  # the wall time of a complete run
            benchlib.write_json(benchlib.results_dir(args.quick) / "run_all.json", {
                "benchmark": "run_all", "quick": args.quick, "threads": args.threads, "started": started,
                "seconds": time.perf_counter() - t0, "load_avg_1m_end": os.getloadavg()[0], "others_cpu_share": others})
    text = summary(args.quick)
    out = Path(args.out) if args.out else benchlib.results_dir(args.quick) / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"\n{text}\nwrote {out}")


if __name__ == "__main__":
    main()
