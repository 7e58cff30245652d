"""
The whole post-training pipeline on the embedded default, in one command, then the report.
Teaches: how the stages feed each other (base -> SFT -> RM -> PPO, SFT -> DPO) and what each adds, in one report.

    python pipeline.py                 # base -> SFT -> RM -> best-of-n vs the RM -> PPO (+ a run without KL penalty)
                                       # -> DPO -> online DPO (labelled by the RM)
                                       # -> GRPO (mixed rewards, + pass@k) -> checkpoints/report.md
    python pipeline.py --grpo-ablations  # also GRPO with the verifier alone and with the gold judge
    python pipeline.py --redo ppo,dpo  # rerun some stages (finished stages are reused otherwise)
    python pipeline.py --redo all
    python pipeline.py --micro         # seconds-long stages, for tests and a first look
    python pipeline.py --full          # ~40 min: also a 4x larger base trained as long as the small one, with SFT
                                       # only (InstructGPT's comparison: a small aligned model against a bigger
                                       # unaligned one), PPO without KL penalty long enough to collapse, and DPO
                                       # with a second beta
    python pipeline.py --seed 1        # everything again with seed 1 -- the toy world (facts split, corpus,
                                       # demos, pairs) and every stage -- into checkpoints/seed-1

After the reward model, `best-of-n` picks the reward model's favourite of n SFT samples (n = 1 ... 64) and
lets the gold judge score it (python -m minipost.evaluate checkpoints/sft --rm checkpoints/rm): the proxy
rises with n while the gold score rises, peaks and falls -- reward over-optimization without any training.
With --seed N, the stages' data loaders build the toy world with seed N too (the environment variable
MINIPOST_WORLD_SEED, set here for the stages; set it yourself to run one stage of a seeded world by hand).

Each stage is its own script (run as a subprocess, exactly as a student would run it); a stage counts as
finished when its output directory holds a checkpoint. The report is rebuilt at the end from what the
stages wrote.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from minipost import errors
from minipost.checkpoint import has_checkpoint

HERE = Path(__file__).resolve().parent  # the stage scripts live beside this file, wherever it is run from

# (name, script, arguments, output directory). Later stages read the earlier ones' checkpoints.
def stages(ck: str, micro: bool, grpo_ablations: bool = False, seed: int | None = None, full: bool = False):
    c = lambda s: f"{ck}/{s}"
    absolute = lambda s: str((Path(ck) / s).resolve())  # the evaluation module runs in HERE (see main)
    if micro:  # tiny settings: the whole pipeline in about a minute (tests)
        lim = ["--eval-limit", "12"]
        base = ["--steps", "30", "--n-docs", "3000", "--log-every", "10", "--save-every", "1000"] + lim
        sft = ["--steps", "10", "--eval-every", "5"] + lim
        rm = ["--steps", "10", "--eval-every", "5", "--norm-samples", "16", "--policy-pairs", "16"] + lim
        ppo = ["--iterations", "2", "--batch-size", "8", "--minibatch-size", "4", "--max-new-tokens", "8"] + lim
        dpo = ["--steps", "6", "--eval-every", "3", "--sweep-steps", "2", "--beta-sweep", "0.5",
               "--policy-pairs", "16"] + lim
        dpo_online = ["--steps", "3", "--batch-size", "4", "--eval-every", "3"] + lim
        grpo = ["--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--minibatch-size", "8",
                "--max-new-tokens", "8", "--passk-samples", "4", "--passk-prompts", "8"] + lim
        big = ["--steps", "10", "--n-docs", "3000", "--save-every", "1000"] + lim
        bon = ["--best-of-n", "4", "--limit", "6"]
    else:
        # (the whole run is meant to fit in 15 minutes on 2 CPU cores: a short run without KL penalty, no DPO beta
        # sweep and no larger base -- those are --full's)
        # GRPO's pass@k: 64 samples for each of 32 held-out fact / skill prompts, per model
        base, sft, rm, ppo, dpo, grpo = [], [], [], [], [], ["--passk-prompts", "32"]
        # (--full only) as long as the small base; at the small base's lr (3e-3) it ended with the HIGHER held-out
        # loss (0.642 vs 0.547), behind at every evaluation: a wider, deeper model wants a smaller step
        big = ["--steps", "800", "--lr", "1e-3"]
        dpo_online = []
        bon = ["--limit", "64"]  # 64 samples of SFT for each of 64 held-out prompts, scored by the RM and the judge
    # GRPO also measures pass@k of SFT, base, PPO and DPO (stored in their directories), hence after them
    grpo_stage = ["--init", c("sft"), "--rm", c("rm"), "--base", c("base"), "--passk-also", f"{c('ppo')},{c('dpo')}"]
    ablations = [(f"grpo-{r}", "train_grpo.py", grpo_stage + ["--reward", r] + grpo, c(f"grpo-{r}"))
                 for r in ("verifier", "judge")] if grpo_ablations else []
    nokl = ppo or ["--iterations", "12"]
    if full and not micro:  # ~40 minutes: a no-KL PPO run long enough to collapse, a second DPO beta on the frontier
        nokl = ["--iterations", "50"]  # (and the larger base, below)
        dpo = ["--beta-sweep", "0.1"]
    if seed is not None:  # every stage with this seed; the world too (train_base.py builds it: --world-seed)
        base = ["--world-seed", str(seed)] + base
        base, sft, rm, ppo, nokl, dpo, dpo_online, grpo, big, bon = (
            [*a, "--seed", str(seed)] for a in (base, sft, rm, ppo, nokl, dpo, dpo_online, grpo, big, bon))
    return [
        ("base", "train_base.py", base, c("base")),
        ("sft", "train_sft.py", ["--init", c("base")] + sft, c("sft")),
        ("rm", "train_rm.py", ["--init", c("sft")] + rm, c("rm")),
        # best-of-n against the reward model: the over-optimization curve without any training (no checkpoint)
        ("best-of-n", "minipost/evaluate.py", [absolute("sft"), "--rm", absolute("rm"), "--out", absolute("best-of-n")]
         + bon, c("best-of-n")),
        ("ppo", "train_ppo.py", ["--init", c("sft"), "--rm", c("rm"), "--base", c("base")] + ppo, c("ppo")),
        # no KL penalty: the reward-hacking demo, and a second PPO point (beta 0) on the frontier
        ("ppo-nokl", "train_ppo.py", ["--init", c("sft"), "--rm", c("rm"), "--base", c("base"), "--kl-coef", "0"]
         + nokl, c("ppo-nokl")),
        ("dpo", "train_dpo.py", ["--init", c("sft"), "--base", c("base")] + dpo, c("dpo")),
        # online DPO: pairs sampled from the policy as it trains, labelled by the reward model
        ("dpo-online", "train_dpo.py", ["--init", c("sft"), "--base", c("base"), "--online", "--labeler", "rm",
                                        "--rm", c("rm")] + dpo_online, c("dpo-online")),
        ("grpo", "train_grpo.py", grpo_stage + grpo, c("grpo")),
        *ablations,
    ] + ([  # InstructGPT's comparison (--full; --micro keeps it so that the tests run every stage)
        # (its own evaluation: what it knows, ranked by likelihood -- the comparison's "better language model")
        ("base-4x", "train_base.py", ["--preset", "tiny-4x"] + big, c("base-4x")),
        # compared with the SMALL base, like the aligned small models (InstructGPT's figure 1)
        ("sft-4x", "train_sft.py", ["--init", c("base-4x"), "--base", c("base")] + sft, c("sft-4x")),
    ] if full or micro else [])


def unfinished_step(out) -> int | None:
    """The step of the mid-run checkpoint in `out` (a stage killed after a periodic save), or None."""
    try:
        return json.loads((Path(out) / "config.json").read_text())["metrics"].get("unfinished_at_step")
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def finished(name: str, out) -> bool:
    """A training stage is finished when its directory holds a checkpoint and a log; the best-of-n evaluation
    when it wrote bestofn.json."""
    if name == "best-of-n":
        return (Path(out) / "bestofn.json").exists()
    return has_checkpoint(out) and (Path(out) / "log.jsonl").exists()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="", help="where every stage writes (default: checkpoints, or "
                   "checkpoints/seed-N with --seed N)")
    p.add_argument("--seed", type=int, default=None,
                   help="run everything -- the toy world and every stage -- with this seed (default: each script's "
                        "own seed, world 0)")
    p.add_argument("--redo", default="", help="comma-separated stages to run again, or 'all'")
    p.add_argument("--only", default="", help="comma-separated stages to run (others are skipped, even if missing)")
    p.add_argument("--micro", action="store_true", help="tiny settings: seconds per stage (tests)")
    p.add_argument("--full", action="store_true",
                   help="about 40 minutes on 2 cores: also a 4x larger base pre-trained as long as the small one "
                        "(800 steps) with SFT only (InstructGPT's comparison), PPO without KL penalty for 50 "
                        "iterations, and DPO with a second beta (0.1)")
    p.add_argument("--device", default="", help="passed to every stage")
    p.add_argument("--grpo-ablations", action="store_true",
                   help="also run GRPO with the verifier alone (grpo-verifier) and with the gold judge (grpo-judge)")
    args = p.parse_args(argv)
    if not args.checkpoints:
        args.checkpoints = "checkpoints" if args.seed is None else f"checkpoints/seed-{args.seed}"
    if args.seed is not None:  # the data loaders' toy world (SFT demos, pairs, prompts) is built with this seed
        os.environ["MINIPOST_WORLD_SEED"] = str(args.seed)
    named = f"{args.only},{args.redo}".split(",")  # naming an ablation stage asks for it too
    plan = stages(args.checkpoints, args.micro, args.grpo_ablations or any(s.startswith("grpo-") for s in named),
                  seed=args.seed, full=args.full)
    names = [s[0] for s in plan]
    redo = set(names) if args.redo == "all" else {s for s in args.redo.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    for s in (redo | only) - set(names):
        p.error(f"unknown stage {s!r}; stages: {', '.join(names)}")

    t_start = time.time()
    for i, (name, script, stage_args, out) in enumerate(plan, 1):
        if only and name not in only:
            continue
        unfinished = unfinished_step(out)
        if finished(name, out) and name not in redo and unfinished is None:
            print(f"[{i}/{len(plan)}] {name}: reusing {out} (pass --redo {name} to run it again)", flush=True)
            continue
        # a stage killed after a periodic checkpoint continues from it (exactly: --resume), unless redone
        keep = "--resume" if unfinished is not None and name not in redo else "--overwrite"
        if script.startswith("minipost/"):  # a module of the package, not a stage script: python -m, run in HERE
            cmd = [sys.executable, "-m", script[:-3].replace("/", ".")] + stage_args  # (its paths are absolute)
        else:
            cmd = [sys.executable, str(HERE / script), "--out", out, keep] + stage_args
        if args.device:
            cmd += ["--device", args.device]
        shown = cmd[1:] if cmd[1] == "-m" else [script] + cmd[2:]  # "-m minipost.evaluate ..." or "train_x.py ..."
        print(f"[{i}/{len(plan)}] {name}: {' '.join(shown)}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=HERE) if script.startswith("minipost/") else subprocess.run(cmd)
        if proc.returncode != 0:
            sys.exit(f"pipeline: stage {name} failed (exit {proc.returncode}); earlier stages' checkpoints are intact")
        took, total = time.time() - t0, time.time() - t_start
        print(f"[{i}/{len(plan)}] {name}: done in {took:.0f}s (total {total:.0f}s)", flush=True)

    from minipost.report import build_report

    report = build_report(args.checkpoints)
    print(f"report: {report} (total {time.time() - t_start:.0f}s)")


if __name__ == "__main__":
    errors.run(main)
