"""
Where the seconds of `python pipeline.py` go: every stage of pipeline.py's plan run once, in order, each in its
own process under cProfile, then each stage's main() split into the calls it makes (training forward / backward /
optimizer step, evaluation, generation, reference log-probs, policy pairs, saving, plotting).

The stages, their arguments and their order come from pipeline.stages(), so this profiles exactly what a fresh
clone runs. Checkpoints go to a scratch directory (fresh: nothing cached), never to checkpoints/.

cProfile adds overhead to every Python call (a few percent on these torch-bound stages; more on Python-heavy
generation loops): the wall time of each stage is recorded with the profiler on, and shares within a stage are
what to read, not absolute seconds. Other processes' share of the CPU is recorded per stage (as run_all.py does).

    python bench/profile_pipeline.py                         # the full pipeline: ~15-20 minutes on 2 cores
    python bench/profile_pipeline.py --micro                 # pipeline.py --micro's settings: a check
    python bench/profile_pipeline.py --only base,sft --checkpoints /tmp/prof
"""

import argparse
import json
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib
import run_all

sys.path.insert(0, str(benchlib.ROOT))
import pipeline  # noqa: E402  (the plan itself: stage names, scripts, arguments)

# wrappers a stage's main() calls through: pstats knows the wrapper's callers but not which wrapped function each
# call reached (one wrapper code object serves every decorated function), so they are named by what they wrap here
WRAPPERS = {
    "_contextlib.py:decorate_context": "torch.no_grad functions (generation, held-out evaluation, scoring)",
    "module.py:_wrapped_call_impl": "model forward (outside the no_grad functions)",
    "optimizer.py:wrapper": "optimizer step",
    "clip_grad.py:_no_grad_wrapper": "gradient clipping",
}
# functions whose cumulative seconds (every call, whoever called) are listed too; they nest: generate_responses
# runs inside evaluate_model, policy_pairs and train_rm.main; evaluate_reference calls evaluate_model
NAMED = [("minipost/evaluate.py", "evaluate_model"), ("minipost/evaluate.py", "generate_responses"),
         ("minipost/evaluate.py", "policy_pairs"), ("minipost/evaluate.py", "knowledge_rank_accuracy"),
         ("minipost/evaluate.py", "sequence_kl"), ("minipost/world.py", "judge"), ("minipost/world.py", "build_world"),
         ("", "held_out_loss"), ("train_rm.py", "pair_accuracy"), ("train_rm.py", "heldout_accuracy"), ("train_rm.py", "raw_rewards"),
         ("train_dpo.py", "reference_logps"), ("train_dpo.py", "heldout_accuracy"), ("train_dpo.py", "train"),
         ("train_ppo.py", "rollout"), ("train_base.py", "tokenize_corpus"), ("minipost/common.py", "save_stage"),
         ("minipost/common.py", "plot_log"), ("minipost/common.py", "load_model")]


def _label(key) -> str:
    name = f"{Path(key[0]).name}:{key[2]}"
    return WRAPPERS.get(name, name)


def breakdown(stats: dict, caller) -> dict:
    """{label: seconds} of `caller`'s direct callees: the cumulative time of the calls made from `caller` (they do
    not overlap; what is left of caller's time is its own Python)."""
    out = {}
    for key, (_, _, _, _, callers) in stats.items():
        if caller in callers:
            out[_label(key)] = out.get(_label(key), 0.0) + callers[caller][3]
    return out


def phase_seconds(prof_path: Path, script: str) -> dict:
    """{"main": {callee: seconds} of the stage's main() (disjoint), "named": {function: cumulative seconds} of
    NAMED (nested, see there), "main_s": main's total}."""
    stats = pstats.Stats(str(prof_path)).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    mains = [k for k in stats if k[2] == "main" and k[0].endswith(script)]
    if not mains:
        return {}
    direct = breakdown(stats, mains[0])
    named = {}
    for suffix, func in NAMED:
        hits = [(k, v) for k, v in stats.items() if k[2] == func and k[0].endswith(suffix) and "site-packages" not in k[0]]
        if hits:
            named[func] = sum(v[3] for _, v in hits)
            named[func + " calls"] = sum(v[1] for _, v in hits)
    return {"main_s": stats[mains[0]][3], "main": dict(sorted(direct.items(), key=lambda kv: -kv[1])), "named": named}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="/tmp/minipost_profile", help="scratch directory (emptied first)")
    p.add_argument("--only", default="", help="comma-separated stages (default: all, in pipeline order)")
    p.add_argument("--micro", action="store_true", help="pipeline.py --micro's settings (a check; numbers meaningless)")
    p.add_argument("--keep", action="store_true", help="do not empty --checkpoints first (reuse earlier stages)")
    p.add_argument("--summarize", action="store_true", help="run nothing: re-read the .prof files of --checkpoints")
    p.add_argument("--out", default="", help="JSON to write; default bench/results/pipeline_profile.json "
                   "(bench/results/quick/ with --micro)")
    return p.parse_args(argv)


def top_functions(prof_path: Path, n: int = 12) -> list[dict]:
    """The n functions with the most time spent in their own body (tottime): where the interpreter sat."""
    stats = pstats.Stats(str(prof_path)).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"function": f"{Path(f).name}:{line}:{fn}", "calls": v[1], "tottime": v[2], "cumtime": v[3]}
            for (f, line, fn), v in rows]


def summarize(args, ck: Path):
    """Recompute the phases from the .prof files a run left (wall times and CPU shares from its JSON)."""
    out_path = Path(args.out) if args.out else benchlib.results_dir(args.micro) / "pipeline_profile.json"
    payload = json.loads(out_path.read_text()) if out_path.exists() else {"stages": []}
    known = {r["stage"]: r for r in payload["stages"]}
    rows = []
    for name, script, _, _ in pipeline.stages(str(ck), args.micro):
        prof = ck / "profiles" / f"{name}.prof"
        if prof.exists():
            rows.append({**known.get(name, {"stage": name}), "phases": phase_seconds(prof, script),
                         "profiled_s": pstats.Stats(str(prof)).total_tt, "top_tottime": top_functions(prof)})
    payload.update(stages=rows, benchmark="pipeline_profile", quick=args.micro)
    payload.setdefault("machine", benchlib.machine_info(benchlib.torch.device("cpu")))
    benchlib.write_json(out_path, payload)
    for r in rows:
        print(f"{r['stage']}: {r.get('wall_s', float('nan')):.0f}s wall; "
              + ", ".join(f"{k} {v:.1f}s" for k, v in list(r["phases"].get("main", {}).items())[:8]))


def main(argv=None):
    args = parse_args(argv)
    ck = Path(args.checkpoints)
    if args.summarize:
        return summarize(args, ck)
    if ck.exists() and not args.keep:
        shutil.rmtree(ck)
    ck.mkdir(parents=True, exist_ok=True)
    prof_dir = ck / "profiles"
    prof_dir.mkdir(exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    info = benchlib.machine_info(benchlib.torch.device("cpu"))
    rows, t_start = [], time.perf_counter()
    out_path = Path(args.out) if args.out else benchlib.results_dir(args.micro) / "pipeline_profile.json"

    def write(report_s=None):  # after every stage: a long run that is stopped still leaves what it measured
        benchlib.write_json(out_path, {"benchmark": "pipeline_profile", "quick": args.micro, "machine": info,
                                       "checkpoints": str(ck), "stages": rows, "report_s": report_s,
                                       "total_s": time.perf_counter() - t_start})
    for name, script, stage_args, out in pipeline.stages(str(ck), args.micro):
        if only and name not in only:
            continue
        prof = prof_dir / f"{name}.prof"
        if script.startswith("minipost/"):  # a module of the package (best-of-n): its arguments hold its --out
            cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", script[:-3].replace("/", ".")] + stage_args
        else:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), script, "--out", out, "--overwrite"] + stage_args
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        result = {}
        log_path = prof_dir / f"{name}.log"
        t0 = time.perf_counter()

        def run():
            with open(log_path, "w") as log:
                result["rc"] = subprocess.run(cmd, cwd=benchlib.ROOT, stdout=log, stderr=subprocess.STDOUT).returncode

        others = run_all.others_share(run)
        wall = time.perf_counter() - t0
        if result["rc"] != 0:
            raise SystemExit(f"stage {name} failed (exit {result['rc']}); see {log_path}")
        phases = phase_seconds(prof, script)
        total = pstats.Stats(str(prof)).total_tt
        print(f"{name}: {wall:.1f}s wall, other processes {others:.0%} of the CPU; "
              + ", ".join(f"{k} {v:.1f}s" for k, v in list(phases.get("main", {}).items())[:8]), flush=True)
        rows.append({"stage": name, "cmd": " ".join(cmd[4:]), "wall_s": wall, "profiled_s": total,
                     "others_cpu_share": others, "phases": phases, "top_tottime": top_functions(prof)})
        write()

    t_report = time.perf_counter()
    if not only:
        from minipost.report import build_report

        build_report(str(ck))
    report_s = time.perf_counter() - t_report
    write(report_s)
    print(f"total {time.perf_counter() - t_start:.0f}s (report {report_s:.1f}s)")


if __name__ == "__main__":
    main()
