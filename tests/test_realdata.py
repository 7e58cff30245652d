"""The GPU section of the docs (docs/gpu.md), run as a new user would, on CPU and small shapes.

The commands are read from docs/gpu.md itself, so the test breaks when the docs drift. Three things are
swapped, nothing else: the official `gpt2` becomes a tiny GPT-2-shaped model written in Hugging Face's
layout (`save_pretrained`'s files, random weights), the named datasets become small files this test writes
in the real formats (Alpaca JSON, HH-RLHF .jsonl.gz transcripts), and step counts and batch sizes shrink
(appended flags: argparse keeps the last value). The files include dialogues far longer than the model's
context (the HH-RLHF rows that crashed the reward model's normalization and PPO's rollouts), and Dolly and
chat files run through SFT too.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost.checkpoint import load_checkpoint
from minipost.download import sha256_of
from minipost.model import GPT, is_pretrained_source

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
# the files in the real formats (bench/gpu_smoke.py writes them too, at GPT-2's real shape)
from realdata_files import CONTEXT, TINY, gpu_commands, write_alpaca, write_chat, write_dolly, write_hf_gpt2, write_hh  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Appended to each stage's command: a few steps, small batches, a few normalization samples.
MICRO = {
    "train_base.py": [],
    "train_sft.py": ["--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "1",
                     "--samples", "2"],
    "train_rm.py": ["--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "1",
                    "--norm-samples", "4", "--samples", "2"],
    "train_ppo.py": ["--iterations", "1", "--batch-size", "4", "--minibatch-size", "2", "--ppo-epochs", "1",
                     "--samples", "2"],
    "train_dpo.py": ["--steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "1",
                     "--samples", "2"],
}


# One thread per run: on these tiny shapes a second thread only waits for the first (on a busy 2-core machine a
# two-thread run took 2.5x the CPU time of a one-thread run).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


# -----------------------------------------------------------------------------
# The docs' commands, on those files


def localize(cmd: list[str], files: dict, tmp: Path) -> list[str]:
    """The same command on this test's files: gpt2 -> the HF-layout directory, dataset names -> files,
    checkpoints/ -> tmp, micro settings appended."""
    out = []
    for i, arg in enumerate(cmd):
        flag = cmd[i - 1] if i else ""
        if flag == "--init" and arg == "gpt2":
            arg = str(files["gpt2"])
        elif flag in ("--data", "--prompts") and arg in files:
            arg = str(files[arg])
        elif arg.startswith("checkpoints/"):
            arg = str(tmp / arg.removeprefix("checkpoints/"))
        out.append(arg)
    assert out[0] == "python", cmd
    return out[1:] + MICRO[out[1]]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """Every command of docs/gpu.md, in order: {script: (command, CompletedProcess)} and the files."""
    tmp = tmp_path_factory.mktemp("gpu")
    files = {"gpt2": write_hf_gpt2(tmp / "hf-gpt2"), "alpaca": write_alpaca(tmp / "alpaca_data.json"),
             "hh-rlhf": write_hh(tmp / "hh-rlhf-train.jsonl.gz")}
    results = {}
    for cmd in gpu_commands():
        args = localize(cmd, files, tmp)
        proc = run(args)
        results[args[0]] = (args, proc)
        assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
    return tmp, files, results


def test_the_docs_run_every_stage(gpu_run):
    _, _, results = gpu_run
    assert list(results) == ["train_base.py", "train_sft.py", "train_rm.py", "train_ppo.py", "train_dpo.py"]
    for script, (args, _) in results.items():
        out = Path(args[args.index("--out") + 1])
        assert (out / "model.safetensors").is_file() and (out / "config.json").is_file(), script


def test_base_imports_the_hugging_face_directory(gpu_run):
    tmp, files, _ = gpu_run
    state, config = load_checkpoint(tmp / "gpt2-base")
    ours = GPT.from_pretrained(str(files["gpt2"]))
    for key, t in ours.state_dict().items():
        torch.testing.assert_close(state[key], t, rtol=0, atol=0)
    assert config["model"]["block_size"] == CONTEXT and config["model"]["vocab_size"] == TINY["vocab_size"]


def test_long_dialogues_are_truncated_and_counted(gpu_run):
    _, _, results = gpu_run
    # SFT: a quarter of the Alpaca rows have a long input; RM and DPO: a third of the HH dialogues are ~1,200
    # tokens; PPO: the same prompts, left-truncated to fit the context with room for --max-new-tokens.
    for script in ("train_sft.py", "train_rm.py", "train_dpo.py"):
        m = re.search(r"'prompt_truncated': (\d+)", results[script][1].stdout)
        assert m and int(m.group(1)) > 0, script
    ppo = results["train_ppo.py"][1].stdout
    m = re.search(r"prompts: (\d+) .*?(\d+) left-truncated to (\d+) tokens", ppo)
    assert m and int(m.group(2)) == 8 and int(m.group(3)) == CONTEXT - 128, ppo[-2000:]


def test_checkpoints_record_the_data_file_hash(gpu_run):
    tmp, files, _ = gpu_run
    for stage, source in (("gpt2-sft", "alpaca"), ("gpt2-rm", "hh-rlhf"), ("gpt2-dpo", "hh-rlhf"),
                          ("gpt2-ppo", "hh-rlhf")):
        _, config = load_checkpoint(tmp / stage)
        recorded = config["data"]["files"]
        assert [f["sha256"] for f in recorded] == [sha256_of(files[source])], stage


def test_real_data_runs_write_side_by_side_samples(gpu_run):
    tmp, _, results = gpu_run
    columns = {"gpt2-sft": {"prompt", "base", "sft"}, "gpt2-rm": {"prompt", "policy", "policy_reward"},
               "gpt2-ppo": {"prompt", "sft", "ppo", "sft_reward", "ppo_reward"}, "gpt2-dpo": {"prompt", "sft", "dpo"}}
    for stage, keys in columns.items():
        rows = [json.loads(line) for line in (tmp / stage / "samples.jsonl").read_text().splitlines()]
        assert len(rows) >= 1 and all(set(r) == keys for r in rows), stage
        # the prompt the models saw left room for the answer: left-truncated, ending with the template
        assert all(r["prompt"].endswith("### Response:\n") for r in rows), stage
        assert "held-out prompts" in results["train_" + stage.split("-")[1] + ".py"][1].stdout


@pytest.mark.parametrize("maker, name, fused", [(write_dolly, "dolly.jsonl", True), (write_chat, "chat.jsonl", False)])
def test_sft_takes_dolly_and_chat_files(gpu_run, tmp_path, maker, name, fused):
    tmp, _, _ = gpu_run
    path = maker(tmp_path / name)
    proc = run(["train_sft.py", "--init", tmp / "gpt2-base", "--data", path, "--block-size", "512",
                "--out", tmp_path / "sft", *MICRO["train_sft.py"], "--skip-eval"] + (["--fused-attn"] if fused else []))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert int(re.search(r"'prompt_truncated': (\d+)", proc.stdout).group(1)) > 0
    assert load_checkpoint(tmp_path / "sft")[1]["model"]["fused_attn"] is fused  # --fused-attn reached the model


def test_fused_attention_flag_switches_every_layer(gpu_run):
    from minipost import common
    from minipost.model import CausalSelfAttention

    tmp, _, _ = gpu_run
    manual, tok, _ = common.load_model(str(tmp / "gpt2-rm"), kind="scalar", fused_attn=False)
    fused, _, _ = common.load_model(str(tmp / "gpt2-rm"), kind="scalar", fused_attn=True)
    assert [m.fused for m in fused.modules() if isinstance(m, CausalSelfAttention)] == [True] * TINY["n_layer"]
    assert not any(m.fused for m in manual.modules() if isinstance(m, CausalSelfAttention))
    ids = torch.tensor([tok.encode("### Instruction:\nHi\n\n### Response:\nHello")] * 2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row: the fused path takes the padding mask too
    with torch.no_grad():
        torch.testing.assert_close(fused.score(ids, mask), manual.score(ids, mask), atol=1e-5, rtol=1e-5)


def test_init_takes_every_form_from_pretrained_takes(tmp_path):
    hf = write_hf_gpt2(tmp_path / "hf")
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((hf / "model.safetensors").read_bytes())
    assert is_pretrained_source(str(hf)) and is_pretrained_source(str(bare)) and is_pretrained_source("gpt2")
    assert not is_pretrained_source(str(tmp_path / "nothing-here"))
    for source in (hf, bare):
        out = tmp_path / f"base-{source.name}"
        proc = run(["train_base.py", "--init", source, "--out", out])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert not is_pretrained_source(str(out))  # a minipost checkpoint is read as one
        state, _ = load_checkpoint(out)
        torch.testing.assert_close(state["transformer.wte.weight"], GPT.from_pretrained(str(hf)).transformer.wte.weight)
    # a directory with only a pickled .bin is refused in one line, saying why
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "gpt2", **TINY}))
    proc = run(["train_base.py", "--init", tmp_path / "bin", "--out", tmp_path / "never"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no model.safetensors" in proc.stderr


# -----------------------------------------------------------------------------
# Offline: one line naming every file to place by hand, no traceback


@pytest.fixture
def offline_env(monkeypatch):
    """Every HTTPS request goes through a proxy on a loopback port nobody listens on: the connection is
    refused at once, as on a machine without network (and no test ever reaches the real network)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in ENV.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy")}
    return {**env, "https_proxy": f"http://127.0.0.1:{port}", "HTTPS_PROXY": f"http://127.0.0.1:{port}"}


def run_in(cwd, env, args):
    """A script run from another directory (so checkpoints/ is cwd's, empty), with the given environment."""
    return subprocess.run([sys.executable, ROOT / args[0], *map(str, args[1:])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_offline_errors_are_one_line_naming_every_file(tmp_path, offline_env):
    proc = run_in(tmp_path, offline_env, ["train_base.py", "--init", "gpt2", "--out", "base"])
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "Traceback" not in err and "\n" not in err, err
    assert "607a30d783dfa663caf39e06633721c8d4cfcd7e/model.safetensors" in err
    assert "place the file at checkpoints/pretrained/gpt2/model.safetensors" in err
    assert not (tmp_path / "base").exists()  # nothing half-made is left behind

    write_hf_gpt2(tmp_path / "hf")
    for script, flag, name, files in (
            ("train_sft.py", "--data", "alpaca", ["alpaca_data.json"]),
            ("train_rm.py", "--data", "hh-rlhf", ["hh-rlhf-harmless-base-train.jsonl.gz",
                                                  "hh-rlhf-helpful-base-train.jsonl.gz"]),
            ("train_dpo.py", "--data", "hh-rlhf", ["hh-rlhf-harmless-base-train.jsonl.gz",
                                                   "hh-rlhf-helpful-base-train.jsonl.gz"])):
        proc = run_in(tmp_path, offline_env, [script, "--init", tmp_path / "hf", flag, name, "--out", "x"])
        err = proc.stderr.strip()
        assert proc.returncode != 0 and "Traceback" not in err and "\n" not in err, (script, err)
        for f in files:  # every missing file at once, each with where to put it
            assert f" -> checkpoints/data/{f}" in err, (script, f, err)
    proc = run_in(tmp_path, offline_env, ["train_ppo.py", "--init", tmp_path / "hf", "--rm", tmp_path / "hf",
                                          "--prompts", "hh-rlhf", "--out", "x", "--base", ""])
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "Traceback" not in err and "\n" not in err, err
    assert "these 2 files" in err


# -----------------------------------------------------------------------------
# dtype per GPU (the GPU is faked: only the capability query and the TF32 switch are replaced)


@pytest.mark.parametrize("capability, requested, dtype, reason", [
    ((7, 5), "auto", torch.float32, "compute capability 7.5 has no native bf16"),  # T4: emulated bf16 is slow
    ((7, 0), "auto", torch.float32, "compute capability 7.0 has no native bf16"),  # V100
    ((8, 0), "auto", torch.bfloat16, "native on this GPU (compute capability 8.0)"),  # A100
    ((9, 0), "fp32", torch.float32, "fp32 as requested (TF32 matmuls)"),  # H100 in fp32: TF32 matmuls
    ((7, 5), "bf16", torch.bfloat16, "emulated on compute capability 7.5: slow"),  # asked for: done, with a warning
])
def test_dtype_auto_picks_native_bf16_only(monkeypatch, capability, requested, dtype, reason):
    from minipost import common

    precision = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", precision.append)
    got, why = common.pick_dtype(torch.device("cuda"), requested)
    assert got == dtype and reason in why
    assert precision == ["high"]  # TF32 for fp32 matmuls, wherever the GPU has it


def test_ppo_prompt_errors_are_one_line_before_any_model_loads(tmp_path):
    # a prompt file with nothing usable: named, counted, and reported before the (missing) models are touched
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": ""}) + "\n" + json.dumps({"prompt": "   "}) + "\n")
    proc = run(["train_ppo.py", "--init", tmp_path / "no-sft", "--rm", tmp_path / "no-rm", "--prompts", empty,
                "--out", tmp_path / "ppo"])
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "\n" not in err and "Traceback" not in err
    assert err == f"error: no usable prompts in {empty} (2 rows read, 2 with an empty instruction)"
    assert not (tmp_path / "ppo").exists()
    # room: --max-new-tokens as long as the context leaves no room for a prompt
    write_hf_gpt2(tmp_path / "hf")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    proc = run(["train_ppo.py", "--init", tmp_path / "hf", "--rm", tmp_path / "hf", "--prompts", prompts,
                "--max-new-tokens", str(CONTEXT), "--out", tmp_path / "ppo2", "--base", ""])
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "\n" not in err and "Traceback" not in err
    assert f"--max-new-tokens {CONTEXT} do not fit the context of {CONTEXT} tokens" in err


@pytest.mark.parametrize("script", ["train_rm.py", "train_dpo.py"])
def test_micro_batches_give_the_full_batch_step(gpu_run, tmp_path, script):
    # The same step with the batch in one piece and in chunks of 1 and 3 pairs: the same loss and gradient
    # norm (before clipping), so the chunks' gradients add up to the full batch's -- a chunk weighted wrongly
    # would change the norm even where Adam's update, invariant to a gradient's scale, would not show it.
    tmp, files, _ = gpu_run
    logs = []
    for micro in (0, 1, 3):
        out = tmp_path / f"m{micro}"
        proc = run([script, "--init", tmp / "gpt2-sft", "--data", files["hh-rlhf"], "--steps", "1", "--batch-size", "4",
                    "--micro-batch-size", str(micro), "--dtype", "fp32", "--skip-eval", "--out", out])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        logs.append(json.loads((out / "log.jsonl").read_text().splitlines()[0]))
    for log in logs[1:]:
        assert log["loss"] == pytest.approx(logs[0]["loss"], rel=1e-5)
        assert log["grad_norm"] == pytest.approx(logs[0]["grad_norm"], rel=1e-4)
