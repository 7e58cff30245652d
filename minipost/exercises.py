"""
Exercises: blank a marked region of the real code, write it yourself, and let the tests grade it.

    python -m minipost.exercises list              # every exercise in course order, with its goal and state
    python -m minipost.exercises start dpo_loss    # blank the region: the code now raises "exercise dpo_loss: ..."
    python -m minipost.exercises check dpo_loss    # run the tests that grade it: PASS or FAIL
    python -m minipost.exercises reset dpo_loss    # put the reference back, byte for byte (your attempt is kept)
    python -m minipost.exercises reset             # reset every started exercise
    python -m minipost.exercises verify            # maintainers: each blanked region fails its tests (in a copy)

Each exercise is a region of the code the pipeline runs, between two comment lines:

    # EXERCISE dpo_loss: the DPO loss from the four sequence log-probs
    ...the lines a student writes...
    # END EXERCISE dpo_loss

`start` replaces the lines between the markers with one `raise NotImplementedError(...)` at the same
indentation and saves the reference in .exercises/ (git-ignored); a passing implementation is then simply
the stage's code, and `python train_dpo.py` runs it. The list of exercises, their files and the tests that
grade them is EXERCISES below; docs/exercises.md gives goals and hints in course order.

This module needs only the standard library (start, reset and list never import torch).
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: minipost/exercises.py -> ..
STATE_DIR = ".exercises"  # under the root, git-ignored: references and attempts of started exercises


@dataclass(frozen=True)
class Exercise:
    name: str
    path: str  # the file that holds the region(s), relative to the root
    tests: tuple[str, ...]  # pytest node ids that grade it


T_MODEL, T_LOSSES, T_LOGP, T_DATA, T_MATH, T_GRPO = (
    "tests/test_model.py", "tests/test_losses.py", "tests/test_logprobs.py", "tests/test_data.py",
    "tests/test_stage_math.py", "tests/test_grpo.py")

# Course order: the model, then the data masks, then each stage's math in pipeline order.
EXERCISES = [
    Exercise("causal_attention", "minipost/model.py",
             (f"{T_MODEL}::test_fused_attention_equals_hand_written", f"{T_MODEL}::test_left_padding_leaves_logits_unchanged",
              f"{T_MATH}::test_attention_is_causal")),
    Exercise("attention_mask", "minipost/model.py",
             (f"{T_MODEL}::test_left_padding_leaves_logits_unchanged",
              f"{T_MODEL}::test_fully_padded_row_is_finite_in_both_paths", f"{T_MATH}::test_attention_mask_by_hand")),
    Exercise("kv_cache", "minipost/model.py",
             (f"{T_MODEL}::test_cached_decoding_equals_full_forward",
              f"{T_MODEL}::test_generate_with_and_without_cache_agree")),
    Exercise("top_p", "minipost/model.py",
             (f"{T_MODEL}::test_top_k_and_top_p_on_hand_made_logits", f"{T_MODEL}::test_sampling_invariants")),
    Exercise("response_mask", "minipost/data.py",
             (f"{T_DATA}::test_collate_right_padding", f"{T_DATA}::test_collate_left_padding")),
    Exercise("token_logprobs", "minipost/model.py",
             (f"{T_LOGP}::test_sequence_logprob_is_minus_cross_entropy_over_the_response_and_ignores_padding",
              f"{T_MATH}::test_token_logprobs_by_hand")),
    Exercise("sft_loss", "train_sft.py",
             (f"{T_LOSSES}::test_sft_loss_micro_batches_give_the_full_batch_gradient",
              f"{T_MATH}::test_sft_loss_is_the_response_token_mean")),
    Exercise("bradley_terry", "train_rm.py", (f"{T_LOSSES}::test_bradley_terry_goldens",)),
    Exercise("sequence_logprob", "minipost/model.py",
             (f"{T_LOGP}::test_sequence_logprob_is_minus_cross_entropy_over_the_response_and_ignores_padding",
              f"{T_LOGP}::test_pair_logps_and_score_pairs_match_sequences_scored_alone")),
    Exercise("dpo_loss", "train_dpo.py",
             (f"{T_LOSSES}::test_dpo_goldens_beta_0_1", f"{T_LOSSES}::test_dpo_logits_and_ln2_when_policy_is_reference",
              f"{T_LOSSES}::test_label_smoothing_ipo_hinge_by_hand")),
    Exercise("ipo_loss", "train_dpo.py", (f"{T_LOSSES}::test_label_smoothing_ipo_hinge_by_hand",)),
    Exercise("kl_estimators", "train_ppo.py",
             (f"{T_LOSSES}::test_kl_estimator_goldens", f"{T_LOSSES}::test_kl_estimators_are_unbiased_monte_carlo")),
    Exercise("token_rewards", "train_ppo.py", (f"{T_LOSSES}::test_reward_lands_on_the_eos_index_and_mask",)),
    Exercise("gae", "train_ppo.py", (f"{T_LOSSES}::test_gae_golden", f"{T_LOSSES}::test_gae_ignores_padding_after_the_end")),
    Exercise("ppo_clip", "train_ppo.py", (f"{T_LOSSES}::test_clipped_surrogate_table",)),
    Exercise("value_clip", "train_ppo.py",
             (f"{T_LOSSES}::test_value_loss_clipping", f"{T_MATH}::test_value_loss_takes_the_larger_error")),
    Exercise("group_advantages", "train_grpo.py",
             (f"{T_GRPO}::test_grpo_advantages_by_hand", f"{T_GRPO}::test_dr_grpo_advantages_by_hand",
              f"{T_GRPO}::test_rloo_advantages_by_hand",
              f"{T_GRPO}::test_groups_are_consecutive_rows_and_unknown_estimator_fails")),
    Exercise("loss_aggregation", "train_grpo.py",
             (f"{T_GRPO}::test_loss_aggregations_by_hand",
              f"{T_GRPO}::test_grpo_loss_at_ratio_one_is_minus_the_mean_advantage")),
]
BY_NAME = {e.name: e for e in EXERCISES}


class ExerciseError(Exception):
    """A clear one-line message for the command line (bad name, missing markers, already started)."""


def _begin(name: str) -> str:
    return f"# EXERCISE {name}:"


def _end(name: str) -> str:
    return f"# END EXERCISE {name}"


def find_regions(lines: list[str], name: str, where: str) -> list[tuple[int, int]]:
    """[(i, j)] for each region of `name`: lines[i] is the begin marker, lines[j] the end marker (j > i)."""
    regions, start = [], None
    for n, line in enumerate(lines):
        text = line.strip()
        if text.startswith(_begin(name)):
            if start is not None:
                raise ExerciseError(f"{where}:{n + 1}: exercise {name} begins again before its END marker")
            start = n
        elif text == _end(name):
            if start is None:
                raise ExerciseError(f"{where}:{n + 1}: END marker of exercise {name} without a begin marker")
            regions.append((start, n))
            start = None
    if start is not None:
        raise ExerciseError(f"{where}:{start + 1}: exercise {name} has no '{_end(name)}' line")
    if not regions:
        raise ExerciseError(f"{where}: no '{_begin(name)}' marker (was it deleted?)")
    return regions


def goal_of(ex: Exercise, root: Path = ROOT) -> str:
    lines = (root / ex.path).read_text().splitlines(keepends=True)
    i, _ = find_regions(lines, ex.name, ex.path)[0]
    return lines[i].strip()[len(_begin(ex.name)):].strip()


def _state_file(root: Path, name: str) -> Path:
    return root / STATE_DIR / f"{name}.json"


def is_started(name: str, root: Path = ROOT) -> bool:
    return _state_file(root, name).exists()


def _exercise(name: str) -> Exercise:
    if name not in BY_NAME:
        raise ExerciseError(f"unknown exercise {name!r}; `python -m minipost.exercises list` shows them all")
    return BY_NAME[name]


def _write_atomically(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _committed_regions(root: Path, ex: Exercise, name: str) -> list[str] | None:
    """The region(s) of `name` in git's HEAD version of the file; None without git (a copy, an archive)."""
    try:
        out = subprocess.run(["git", "show", f"HEAD:./{ex.path}"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    lines = out.stdout.splitlines(keepends=True)
    try:
        return ["".join(lines[i + 1 : j]) for i, j in find_regions(lines, name, ex.path)]
    except ExerciseError:  # markers not committed yet
        return None


def start(name: str, root: Path = ROOT) -> Path:
    """Blank every region of `name` in its file; save the reference. Refuses if already started."""
    ex = _exercise(name)
    state = _state_file(root, name)
    if state.exists():
        raise ExerciseError(f"exercise {name} is already started (your edits are in {ex.path}); "
                            f"`reset {name}` restores the reference first")
    path = root / ex.path
    lines = path.read_text().splitlines(keepends=True)
    regions = find_regions(lines, name, ex.path)
    committed = _committed_regions(root, ex, name)
    if committed is not None and committed != ["".join(lines[i + 1 : j]) for i, j in regions]:
        raise ExerciseError(f"the region of {name} in {ex.path} differs from the committed code (edited without "
                            f"`start`?); `git diff {ex.path}` shows how; restore it before starting")
    references, out, prev = [], [], 0
    for i, j in regions:
        references.append("".join(lines[i + 1 : j]))
        marker = lines[i]
        indent = marker[: len(marker) - len(marker.lstrip())]
        goal = marker.strip()[len(_begin(name)):].strip()
        message = f"exercise {name}: {goal} (see docs/exercises.md)"
        out += lines[prev : i + 1] + [f"{indent}raise NotImplementedError({json.dumps(message)})\n"]
        prev = j  # keep the end marker
    out += lines[prev:]
    state.parent.mkdir(exist_ok=True)
    _write_atomically(state, json.dumps({"name": name, "path": ex.path, "references": references}, indent=1))
    _write_atomically(path, "".join(out))
    return path


def reset(name: str, root: Path = ROOT) -> bool:
    """Put the saved reference back into every region of `name` (the current contents, your attempt, are saved
    to .exercises/NAME.attempt.txt). False when the exercise was not started."""
    ex = _exercise(name)
    state = _state_file(root, name)
    if not state.exists():
        return False
    saved = json.loads(state.read_text())
    path = root / ex.path
    lines = path.read_text().splitlines(keepends=True)
    regions = find_regions(lines, name, ex.path)
    if len(regions) != len(saved["references"]):
        raise ExerciseError(f"{ex.path}: exercise {name} has {len(regions)} regions, {len(saved['references'])} saved; "
                            f"restore the marker lines, then reset again")
    out, prev, attempts = [], 0, []
    for (i, j), reference in zip(regions, saved["references"]):
        attempts.append("".join(lines[i + 1 : j]))
        out += lines[prev : i + 1] + [reference]
        prev = j
    out += lines[prev:]
    (root / STATE_DIR / f"{name}.attempt.txt").write_text("\n# ---- next region ----\n".join(attempts))
    _write_atomically(path, "".join(out))
    state.unlink()
    return True


def tests_of(names: list[str]) -> list[str]:
    """The pytest node ids that grade these exercises, each once, in order."""
    return list(dict.fromkeys(t for n in names for t in _exercise(n).tests))


def check(name: str, root: Path = ROOT) -> bool:
    """Run the tests that grade `name`; print and return whether they all pass."""
    ex = _exercise(name)
    state = "your implementation" if is_started(name, root) else "the reference (not started)"
    print(f"checking exercise {name} in {ex.path}: {state}, {len(ex.tests)} test(s)", flush=True)
    ok = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests_of([name])], cwd=root).returncode == 0
    print(f"\n{'PASS' if ok else 'FAIL'}: exercise {name}")
    return ok


def _copy_of(root: Path, dest: Path) -> Path:
    """The code and tests of `root` (no git, checkpoints or exercise state) copied to dest."""
    import shutil

    skip = {".git", "checkpoints", "bench", "docs", ".venv", "__pycache__", ".pytest_cache"}
    shutil.copytree(root, dest, ignore=lambda d, names: [n for n in names if n in skip or n.endswith(".pyc")])
    for ex in EXERCISES:  # exercises started in root: their references go back in the copy
        reset(ex.name, dest)
    return dest


def _pytest_in_child(root: Path, tests: list[str]) -> int:
    """pytest's exit code for `tests` in a forked child that imports minipost and the scripts from `root`.
    The parent has imported torch and pytest once; each child skips that cost (seconds on a busy machine)."""
    import pytest

    pid = os.fork()
    if pid == 0:  # the child: forget any minipost already imported, read everything from root, output hidden
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            for mod in [m for m in sys.modules if m == "minipost" or m.startswith(("minipost.", "train_", "tests"))]:
                del sys.modules[mod]
            sys.path.insert(0, str(root))
            os.chdir(root)
            code = int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests]))
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def verify(names: list[str], root: Path = ROOT) -> list[str]:
    """For maintainers, after moving code: in a temporary copy of root, every exercise's blanked region must make
    its tests FAIL (pytest exit code 1, not a collection error), and the references must make them all pass.
    Returns the problems found (empty: the kit works). The working tree is never modified."""
    import tempfile

    import pytest  # noqa: F401  (imported once here, inherited by every forked child)
    import torch  # noqa: F401

    problems = []
    with tempfile.TemporaryDirectory(prefix="minipost-exercises-") as tmp:
        copy = _copy_of(root, Path(tmp) / "repo")
        for name in names:
            start(name, copy)
            code = _pytest_in_child(copy, list(_exercise(name).tests))
            reset(name, copy)
            if code != 1:
                problems.append(f"{name}: blanked, its tests gave pytest exit code {code}, expected 1 (a failure)")
        code = _pytest_in_child(copy, tests_of(names))
        if code != 0:
            problems.append(f"the references of {', '.join(names)}: pytest exit code {code}, expected 0")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minipost.exercises", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["list", "start", "check", "reset", "verify"],
                   help="verify (for maintainers): in a temporary copy, each blanked region fails its tests and the "
                        "references pass")
    p.add_argument("name", nargs="?", default="", help="the exercise (reset without a name resets every started one)")
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            for n, ex in enumerate(EXERCISES, 1):
                mark = "  (started)" if is_started(ex.name) else ""
                print(f"{n:2d}. {ex.name:<17} {ex.path:<19} {goal_of(ex)}{mark}")
            return 0
        if args.command == "verify":
            names = [args.name] if args.name else [ex.name for ex in EXERCISES]
            for name in names:
                _exercise(name)
            problems = verify(names)
            print("\n".join(problems) if problems else f"verified {len(names)} exercise(s): blanked fails, reference passes")
            return 1 if problems else 0
        if args.command == "reset" and not args.name:
            done = [ex.name for ex in EXERCISES if reset(ex.name)]
            print(f"reset {', '.join(done)}" if done else "no exercise was started")
            return 0
        if not args.name:
            p.error(f"{args.command} needs an exercise name")
        if args.command == "start":
            path = start(args.name)
            print(f"started {args.name}: the region in {path.relative_to(ROOT)} now raises NotImplementedError;\n"
                  f"write it, then `python -m minipost.exercises check {args.name}`")
            return 0
        if args.command == "reset":
            restored = reset(args.name)
            print(f"restored the reference of {args.name} (your attempt: {STATE_DIR}/{args.name}.attempt.txt)"
                  if restored else f"exercise {args.name} was not started: nothing to reset")
            return 0
        return 0 if check(args.name) else 1
    except ExerciseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
