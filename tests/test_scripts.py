"""Every script end to end on micro settings (subprocesses, as a student runs them), the report built
from their outputs, exact resume, and the command-line checks that run before any model loads."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost.checkpoint import load_checkpoint, read_safetensors

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def log_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_pipeline_writes_every_stage_and_the_report(micro):
    d, out = micro
    for stage in ("base", "sft", "rm", "ppo", "ppo-nokl", "dpo", "dpo-online", "grpo", "base-4x", "sft-4x"):
        assert (d / stage / "model.safetensors").exists() and (d / stage / "config.json").exists(), stage
    report = (d / "report.md").read_text()
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7."):
        assert section in report
    for png in ("win_rates.png", "frontier.png", "hacking.png", "curves.png", "pass_at_k.png", "best_of_n.png"):
        assert (d / png).stat().st_size > 1000, png
    # best-of-n against the RM: n = 1, 2, 4 and the KL of each; the proxy of the pick never falls with n
    bon = json.loads((d / "best-of-n" / "bestofn.json").read_text())
    assert bon["n"] == [1, 2, 4] and bon["kl"][0] == 0.0
    assert bon["rm_score"] == sorted(bon["rm_score"])
    assert "Offline vs online DPO" in report and "Best-of-n against the reward model" in report
    # numbers in the table are copied from eval.json
    sft = json.loads((d / "sft" / "eval.json").read_text())
    assert f"{100 * sft['format_rate']:.0f}%" in report
    # a second run reuses every finished stage
    again = run("pipeline.py", "--micro", "--checkpoints", d, timeout=600)
    assert again.returncode == 0 and again.stdout.count("reusing") == 11  # 10 checkpoints and best-of-n


@pytest.mark.parametrize("stage, key", [("base", "loss"), ("sft", "loss"), ("rm", "loss"), ("dpo", "loss"), ("ppo", "rm_score"),
                                        ("grpo", "reward")])
def test_every_stage_logs_finite_numbers(micro, stage, key):
    rows = log_rows(micro[0] / stage / "log.jsonl")
    assert rows and all(math.isfinite(r[key]) for r in rows)


@pytest.mark.parametrize("stage, init, prefix", [("sft", "base", ""), ("rm", "sft", "gpt."), ("ppo", "sft", ""), ("dpo", "sft", ""),
                                                  ("grpo", "sft", "")])
def test_every_stage_changed_its_parameters(micro, stage, init, prefix):
    d = micro[0]
    after, _ = load_checkpoint(d / stage)
    before, _ = load_checkpoint(d / init)
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(after[prefix + key], before[key])


def test_base_loss_falls_and_stage_checks_are_printed(micro):
    d, out = micro
    rows = log_rows(d / "base" / "log.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    # DPO at step 0: policy == reference, so the loss is ln 2 (docs/pitfalls.md, pitfall 6)
    m = re.search(r"check: step-0 \|h\| max (\S+); loss (\S+)", out)
    assert m and float(m.group(1)) == 0.0 and abs(float(m.group(2)) - math.log(2)) < 1e-6
    # PPO's first minibatch: ratio exactly 1, nothing clipped (docs/pitfalls.md, pitfall 7)
    for m in re.finditer(r"\|ratio - 1\| max (\S+) \(must be < 1e-5\), clip fraction (\S+)", out):
        assert float(m.group(1)) < 1e-5 and float(m.group(2)) == 0.0
    assert "|ratio - 1|" in out


def test_rm_normalization_is_stored_and_applied_on_load(micro):
    d = micro[0]
    tensors, _ = read_safetensors(d / "rm" / "model.safetensors")
    cfg = json.loads((d / "rm" / "config.json").read_text())
    assert abs(tensors["reward_shift"].item() - cfg["metrics"]["norm_shift"]) < 1e-5
    assert abs(tensors["reward_scale"].item() - cfg["metrics"]["norm_scale"]) < 1e-5
    from minipost.common import load_model

    rm, _, _ = load_model(str(d / "rm"), kind=None)
    assert abs(rm.reward_shift.item() - cfg["metrics"]["norm_shift"]) < 1e-5


def test_base_resume_is_bitwise(tmp_path):
    common = ["train_base.py", "--steps", "6", "--n-docs", "1500", "--log-every", "1", "--skip-eval", "--dtype", "fp32",
              "--save-every", "2", "--batch-size", "4"]
    straight = run(*common, "--out", tmp_path / "a")
    assert straight.returncode == 0, straight.stderr
    first = run(*common, "--out", tmp_path / "b", "--stop-at", "3")  # killed after step 3, saved after step 2
    assert first.returncode == 0 and "stopped at step 3" in first.stdout, first.stderr
    second = run(*common, "--out", tmp_path / "b", "--resume")
    assert second.returncode == 0 and "resumed" in second.stdout and "at step 2" in second.stdout, second.stderr
    a, _ = read_safetensors(tmp_path / "a" / "model.safetensors")
    b, _ = read_safetensors(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in log_rows(tmp_path / "a" / "log.jsonl")]
    lb = [r["loss"] for r in log_rows(tmp_path / "b" / "log.jsonl")]
    assert la == lb and len(la) == 6


def test_rm_runs_with_the_same_seed_are_identical(micro, tmp_path):
    # the scalar head starts from random weights: seeded before the model is built, or every run differs
    args = ["train_rm.py", "--init", micro[0] / "sft", "--steps", "2", "--policy-pairs", "0", "--skip-eval"]
    for name in ("a", "b"):
        assert run(*args, "--out", tmp_path / name).returncode == 0
    a, _ = read_safetensors(tmp_path / "a" / "model.safetensors")
    b, _ = read_safetensors(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("script, args, message", [
    ("train_sft.py", ["--lr", "0"], "must be > 0"),
    ("train_sft.py", ["--batch-size", "0"], "positive integer"),
    ("train_sft.py", ["--batch-size", "8", "--micro-batch-size", "0"], "must be positive"),
    ("train_dpo.py", ["--beta", "0"], "must be > 0"),
    ("train_dpo.py", ["--label-smoothing", "0.5"], "label-smoothing"),
    ("train_ppo.py", ["--kl-coef=-1"], "must be >= 0"),
    ("train_ppo.py", ["--clip", "0"], "must be > 0"),
    ("train_ppo.py", ["--gamma", "1.5"], "must be in [0, 1]"),
    ("train_ppo.py", ["--lam=-0.1"], "must be in [0, 1]"),
    ("train_ppo.py", ["--reward", "judge", "--prompts", "hh-rlhf"], "needs the toy world's prompts"),
    ("train_rm.py", ["--lr=-1e-3"], "must be > 0"),
    ("train_rm.py", ["--policy-samples", "1"], "must be >= 2"),
    ("train_dpo.py", ["--policy-samples", "1"], "must be >= 2"),
    ("train_dpo.py", ["--rpo-alpha=-1"], "must be >= 0"),
    ("train_base.py", ["--steps", "0"], "positive integer"),
    ("chat.py", ["--top-p", "0"], "top_p must be in (0, 1]"),
    ("chat.py", ["--temperature=-1"], "must be >= 0"),
])
def test_bad_command_lines_fail_before_any_model_loads(script, args, message):
    proc = run(script, *args, "--init", "/nonexistent", timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_existing_checkpoint_is_refused_without_resume_or_overwrite(micro):
    d = micro[0]
    proc = run("train_sft.py", "--init", d / "base", "--out", d / "sft", "--steps", "1")
    assert proc.returncode != 0 and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    proc = run("train_sft.py", "--init", d / "base", "--out", d / "nothing-here", "--resume")
    assert proc.returncode != 0 and "nothing-here" in proc.stderr
    proc = run("train_sft.py", "--init", d / "missing-base", "--out", d / "x")
    assert proc.returncode != 0 and "missing-base" in proc.stderr


def test_cuda_without_a_gpu_is_a_clear_error(micro):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run("train_sft.py", "--init", micro[0] / "base", "--out", micro[0] / "cuda", "--device", "cuda")
    assert proc.returncode != 0 and "no CUDA GPU" in proc.stderr


def test_ppo_frozen_models_stay_bitwise_unchanged(micro, tmp_path, monkeypatch):
    """Run train_ppo.main in this process and snapshot every model it freezes (reference, reward)."""
    import train_ppo
    from minipost import common

    frozen = []
    original = common.frozen

    def spy(model):
        frozen.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return original(model)

    monkeypatch.setattr(common, "frozen", spy)
    d = micro[0]
    train_ppo.main(["--init", str(d / "sft"), "--rm", str(d / "rm"), "--out", str(tmp_path / "ppo"), "--iterations", "2",
                    "--batch-size", "4", "--minibatch-size", "2", "--max-new-tokens", "6", "--skip-eval"])
    assert len(frozen) >= 2
    for model, snapshot in frozen:
        assert all(not p.requires_grad for p in model.parameters()) and not model.training
        assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())
    rows = log_rows(tmp_path / "ppo" / "log.jsonl")
    assert len(rows) == 2 and all(math.isfinite(r["kl"]) for r in rows)


def test_ppo_reward_judge_lands_on_each_response(micro, monkeypatch):
    """--reward judge: each rollout's reward is the judge's score of ITS response (a stub that depends on
    the text), minus the missing-EOS penalty, whatever the minibatch order. Policy = reference: KL is 0."""
    import types

    import train_ppo
    from minipost import common, data, world

    monkeypatch.setattr(world, "judge", lambda prompt, response: types.SimpleNamespace(score=len(response) / 100))
    d = micro[0]
    policy, tok, _ = common.load_model(str(d / "sft"))
    ref, _, _ = common.load_model(str(d / "sft"))
    rm, _, _ = common.load_model(str(d / "rm"), kind="scalar")
    value, _, _ = common.load_model(str(d / "rm"), kind="scalar")
    args = train_ppo.parse_args(["--reward", "judge", "--max-new-tokens", "3", "--batch-size", "4",
                                 "--minibatch-size", "2"])
    prompts = [r["prompt"] for r in data.load_prompts("world")[0][:4]]
    perm = torch.tensor([2, 0, 3, 1])
    enc, _ = data.encode_prompts(tok, prompts, policy.config.block_size - args.max_new_tokens)
    ro = train_ppo.rollout(policy, ref, rm, value, tok, prompts, enc, args, 0.3, torch.Generator().manual_seed(0),
                           "cpu", torch.float32, perm)
    texts = train_ppo.response_texts(ro["new"], ro["mask"], tok)
    expected = torch.tensor([len(t) / 100 for t in texts]) - args.missing_eos_penalty * (~ro["has_eos"]).float()
    assert len(set(texts)) > 1 and (~ro["has_eos"]).any()  # the check can tell responses apart, and the penalty apart
    assert torch.equal(ro["kl"], torch.zeros_like(ro["kl"]))
    assert torch.allclose((ro["rewards"] * ro["mask"]).sum(dim=1), expected, atol=1e-6)


def test_dpo_rpo_alpha_adds_the_chosen_nll(micro, tmp_path):
    """--rpo-alpha a: the loss is the DPO loss plus a * the chosen responses' NLL per token (> 0)."""
    import train_dpo

    d = micro[0]
    rows = [{"prompt": f"What is {i} plus 1?", "chosen": str(i + 1), "rejected": f"I think it is {i + 3}."} for i in range(8)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--init", str(d / "sft"), "--base", "", "--steps", "1", "--skip-eval", "--data", str(tmp_path / "pairs.jsonl")]
    train_dpo.main(argv + ["--out", str(tmp_path / "dpo")])
    train_dpo.main(argv + ["--out", str(tmp_path / "rpo"), "--rpo-alpha", "1"])
    dpo, rpo = log_rows(tmp_path / "dpo" / "log.jsonl")[0], log_rows(tmp_path / "rpo" / "log.jsonl")[0]
    assert dpo["loss"] == pytest.approx(math.log(2), abs=1e-3)  # step 0: policy = reference
    nll = rpo["loss"] - dpo["loss"]  # the same batch (same seed): only the NLL term differs
    assert nll > 0.5 and math.isfinite(nll)


def test_the_gpu_smoke_script_runs_on_the_cpu(micro, tmp_path):
    """bench/gpu_smoke.py -- the run a GPU gets first -- on the CPU at tiny shapes, so that it cannot rot: chat,
    docs/gpu.md's commands, every collective and two stages under torchrun (gloo, one rank), and a stopped and
    resumed GRPO run, each a row of its table, every row ok (the micro pipeline is the module's own)."""
    proc = run("bench/gpu_smoke.py", "--device", "cpu", "--shape", "tiny", "--reuse", micro[0], "--work", tmp_path,
               timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r.split(" | ")[0].strip("| ") for r in rows]
    assert len(rows) == 11 and all(" | ok | " in r for r in rows), rows
    assert {"gpu.md train_ppo", "collectives (torchrun, 1 rank)", "torchrun train_ppo", "resume cpu -> cpu"} <= set(names)
