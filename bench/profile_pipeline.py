"""
Where the seconds of `python pipeline.py` go: every stage of pipeline.py's plan run once, in order, each in its
own process under cProfile, then the cumulative seconds of the functions that matter (training steps,
evaluation, generation, reference log-probs, policy pairs, the DPO sweep, saving, plotting) per stage.

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

# (label, file suffix, function name): cumulative seconds of these are what the tables show. A function called
# inside another listed one is counted in both (cumulative); the notes in docs/speed.md say which nest.
PHASES = [
    ("evaluate_model", "minipost/evaluate.py", "evaluate_model"),
    ("evaluate_reference", "minipost/evaluate.py", "evaluate_reference"),
    ("generate_responses", "minipost/evaluate.py", "generate_responses"),
    ("knowledge_rank_accuracy", "minipost/evaluate.py", "knowledge_rank_accuracy"),
    ("sequence_kl", "minipost/evaluate.py", "sequence_kl"),
    ("judge", "minipost/world.py", "judge"),
    ("policy_pairs", "minipost/evaluate.py", "policy_pairs"),
    ("build_world", "minipost/world.py", "build_world"),
    ("model.generate", "minipost/model.py", "generate"),
    ("model.forward", "minipost/model.py", "forward"),
    ("backward", "torch/_tensor.py", "backward"),
    ("optimizer.step", "torch/optim/adamw.py", "step"),
    ("clip_grad_norm", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
    ("held_out_loss", "", "held_out_loss"),
    ("reference_logps (dpo)", "train_dpo.py", "reference_logps"),
    ("dpo train()", "train_dpo.py", "train"),
    ("heldout_accuracy (dpo)", "train_dpo.py", "heldout_accuracy"),
    ("pair_accuracy (rm)", "train_rm.py", "pair_accuracy"),
    ("raw_rewards (rm)", "train_rm.py", "raw_rewards"),
    ("rollout (ppo)", "train_ppo.py", "rollout"),
    ("tokenize_corpus (base)", "train_base.py", "tokenize_corpus"),
    ("save_stage", "minipost/common.py", "save_stage"),
    ("plot_log", "minipost/common.py", "plot_log"),
    ("load_model", "minipost/common.py", "load_model"),
    ("import torch", "", "<module>"),  # filled specially: torch/__init__.py
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="/tmp/minipost_profile", help="scratch directory (emptied first)")
    p.add_argument("--only", default="", help="comma-separated stages (default: all, in pipeline order)")
    p.add_argument("--micro", action="store_true", help="pipeline.py --micro's settings (a check; numbers meaningless)")
    p.add_argument("--keep", action="store_true", help="do not empty --checkpoints first (reuse earlier stages)")
    p.add_argument("--out", default="", help="JSON to write; default bench/results/pipeline_profile.json "
                   "(bench/results/quick/ with --micro)")
    return p.parse_args(argv)


def phase_seconds(prof_path: Path) -> dict:
    """{label: cumulative seconds} of PHASES in one stage's profile (functions that never ran are left out)."""
    stats = pstats.Stats(str(prof_path)).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    out = {}
    for label, suffix, func in PHASES:
        if label == "import torch":
            hits = [v[3] for (f, _, fn), v in stats.items() if fn == "<module>" and f.endswith("torch/__init__.py")]
        else:
            hits = [v[3] for (f, _, fn), v in stats.items() if fn == func and f.endswith(suffix)]
        if hits:
            # a recursive or re-entered function's cumtime is already the outermost call's; several files
            # defining the same name (held_out_loss) each ran in their own script: the sum is right here
            out[label] = sum(hits)
    return out


def top_functions(prof_path: Path, n: int = 12) -> list[dict]:
    """The n functions with the most time spent in their own body (tottime): where the interpreter sat."""
    stats = pstats.Stats(str(prof_path)).stats
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"function": f"{Path(f).name}:{line}:{fn}", "calls": v[1], "tottime": v[2], "cumtime": v[3]}
            for (f, line, fn), v in rows]


def main(argv=None):
    args = parse_args(argv)
    ck = Path(args.checkpoints)
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
        phases = phase_seconds(prof)
        total = pstats.Stats(str(prof)).total_tt
        print(f"{name}: {wall:.1f}s wall, other processes {others:.0%} of the CPU; "
              + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])[:10]), flush=True)
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
