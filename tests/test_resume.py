"""Exact --resume in every stage: a run killed between two periodic checkpoints and resumed ends with the
weights of an uninterrupted run, bit for bit, and its log holds each step once. The killed run is a forked
copy of this process that --stop-at ends with os._exit, as a kill would (nothing saved, nothing cleaned)."""

import importlib
import json
import os

import pytest
import torch

from minipost.checkpoint import read_safetensors

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def run_main(script, argv):
    importlib.import_module(script).main([str(a) for a in argv])


def run_killed(script, argv):
    """Exit code of `script argv` run in a forked child (which --stop-at ends with os._exit(0))."""
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)  # the parent's thread pool does not survive a fork
            run_main(script, argv)
        finally:
            os._exit(3)  # reached only if --stop-at did not end the process
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def logged_steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def assert_resume_is_exact(script, argv, out, total, kill_at=3, every=2):
    torch.set_num_threads(1)  # the same kernels in every run (and in the forked one)
    run_main(script, argv + ["--out", out / "straight"])
    assert run_killed(script, argv + ["--out", out / "resumed", "--save-every", every, "--stop-at", kill_at]) == 0
    assert logged_steps(out / "resumed") == list(range(kill_at))  # saved after step 2, then killed after step 3
    run_main(script, argv + ["--out", out / "resumed", "--save-every", every, "--resume"])
    a, _ = read_safetensors(out / "straight" / "model.safetensors")
    b, _ = read_safetensors(out / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_steps(out / "resumed") == logged_steps(out / "straight") == list(range(total))
    return a


def test_sft_resume_is_exact_and_a_killed_overwrite_keeps_the_old_run(tiny_dir, tmp_path):
    argv = ["--init", tiny_dir / "lm", "--data", tiny_dir / "demos.jsonl", "--steps", "5", "--batch-size", "2",
            "--holdout", "0.2", "--eval-every", "2", "--skip-eval", "--dtype", "fp32", "--device", "cpu"]
    weights = assert_resume_is_exact("train_sft", argv, tmp_path, total=5)
    # an --overwrite run killed before its first save: the old checkpoint AND its log are still there
    out = tmp_path / "straight"
    argv = argv + ["--out", out, "--overwrite", "--lr", "1e-2", "--stop-at", "2"]
    assert run_killed("train_sft", argv) == 0
    kept, _ = read_safetensors(out / "model.safetensors")
    assert all(torch.equal(kept[k], weights[k]) for k in weights) and logged_steps(out) == list(range(5))
    run_main("train_sft", argv[:-2])  # the next run cleans the dead one's pending log and replaces both
    assert logged_steps(out) == list(range(5)) and not (out / "log.jsonl.new").exists()
    new, _ = read_safetensors(out / "model.safetensors")
    assert not torch.equal(new["transformer.wte.weight"], weights["transformer.wte.weight"])


def test_rm_resume_is_exact(tiny_dir, tmp_path):
    argv = ["--init", tiny_dir / "lm", "--data", tiny_dir / "pairs.jsonl", "--steps", "5", "--batch-size", "2",
            "--policy-pairs", "0", "--norm-samples", "4", "--skip-eval", "--dtype", "fp32", "--device", "cpu"]
    assert_resume_is_exact("train_rm", argv, tmp_path, total=5)


def test_ppo_resume_is_exact(tiny_dir, tmp_path):
    # --warmup 6 spans the kill: the learning-rate warmup must continue where it was, not restart
    argv = ["--init", tiny_dir / "lm", "--rm", tiny_dir / "rm", "--base", "", "--prompts", tiny_dir / "prompts.jsonl",
            "--iterations", "5", "--batch-size", "4", "--minibatch-size", "2", "--ppo-epochs", "1",
            "--max-new-tokens", "4", "--warmup", "6", "--skip-eval", "--dtype", "fp32", "--device", "cpu"]
    assert_resume_is_exact("train_ppo", argv, tmp_path, total=5)


def test_dpo_resume_is_exact(tiny_dir, tmp_path):
    argv = ["--init", tiny_dir / "lm", "--base", "", "--data", tiny_dir / "pairs.jsonl", "--steps", "5",
            "--batch-size", "2", "--policy-pairs", "0", "--holdout", "0.2", "--eval-every", "2", "--skip-eval",
            "--dtype", "fp32", "--device", "cpu"]
    assert_resume_is_exact("train_dpo", argv, tmp_path, total=5)
    # killed after its last step's save: --resume has no step left and still finishes with the same metrics
    before = json.loads((tmp_path / "straight" / "config.json").read_text())["metrics"]
    run_main("train_dpo", argv + ["--out", tmp_path / "straight", "--resume"])
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["metrics"] == before


def test_ctrl_c_names_the_last_periodic_checkpoint(tiny_dir, tmp_path, capsys, monkeypatch):
    from minipost import common, errors

    real_check = common.check_finite

    def ctrl_c_at_step_4(loss, step, what="loss"):
        if step == 4:
            raise KeyboardInterrupt
        return real_check(loss, step, what)

    monkeypatch.setattr(common, "check_finite", ctrl_c_at_step_4)
    argv = ["--init", tiny_dir / "lm", "--data", tiny_dir / "demos.jsonl", "--steps", "8", "--batch-size", "2",
            "--save-every", "3", "--skip-eval", "--device", "cpu", "--out", tmp_path / "run"]
    with pytest.raises(SystemExit) as e:
        errors.run(importlib.import_module("train_sft").main, [str(a) for a in argv])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == (f"interrupted: the last checkpoint is {tmp_path / 'run'} (step 3, saved "
                                               "by this run); continue it with --resume")
    assert logged_steps(tmp_path / "run") == [0, 1, 2, 3]


def test_grpo_resume_is_exact(tiny_dir, tmp_path):
    argv = ["--init", tiny_dir / "lm", "--rm", tiny_dir / "rm", "--reward", "rm", "--base", "",
            "--prompts", tiny_dir / "prompts.jsonl", "--steps", "5", "--prompts-per-step", "2", "--group-size", "2",
            "--minibatch-size", "2", "--max-new-tokens", "4", "--warmup", "6", "--skip-eval", "--dtype", "fp32",
            "--device", "cpu"]
    assert_resume_is_exact("train_grpo", argv, tmp_path, total=5)


def test_lora_dpo_resume_is_exact(tiny_dir, tmp_path):
    """With LoRA the periodic checkpoint holds merged weights; the adapters travel in the train state and the
    frozen weights come from --init again: the resumed run still ends bitwise where the straight one does."""
    argv = ["--init", tiny_dir / "lm", "--base", "", "--data", tiny_dir / "pairs.jsonl", "--steps", "5",
            "--batch-size", "2", "--policy-pairs", "0", "--holdout", "0.2", "--eval-every", "2", "--skip-eval",
            "--dtype", "fp32", "--device", "cpu", "--lora-rank", "2", "--lr", "1e-3"]
    weights = assert_resume_is_exact("train_dpo", argv, tmp_path, total=5)
    start, _ = read_safetensors(tiny_dir / "lm" / "model.safetensors")
    assert not torch.equal(weights["transformer.h.0.attn.c_attn.weight"], start["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(weights["transformer.wte.weight"], start["transformer.wte.weight"])  # frozen: not adapted
