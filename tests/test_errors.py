"""Every mistake a user can make ends in ONE line that names the flag, file or checkpoint at fault, and an
exit code -- never a traceback (tracebacks are for bugs). The scripts run in-process through errors.run, as
`python script.py ...` runs them; an exception that escapes it is exactly the traceback a user would see."""

import importlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost import checkpoint as ckpt
from minipost import errors

class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.fixture(scope="module")
def d(tiny_dir, tmp_path_factory):
    """The shared tiny checkpoints, broken variants of them, and broken data files."""
    d = tmp_path_factory.mktemp("errors")
    for name in ("lm", "rm"):
        shutil.copytree(tiny_dir / name, d / name)
    shutil.copy(tiny_dir / "demos.jsonl", d / "demos.jsonl")
    broken = {"n_head3": lambda c: c["model"].update(n_head=3),
              "misspelt": lambda c: c["model"].update(n_layr=c["model"].pop("n_layer")),
              "no_model_section": lambda c: c.pop("model"),
              "vocab_out_of_range": lambda c: c["tokenizer"].update(vocab_size=10**6)}
    for name, edit in broken.items():
        shutil.copytree(d / "lm", d / name)
        config = json.loads((d / name / "config.json").read_text())
        edit(config)
        (d / name / "config.json").write_text(json.dumps(config))
    broken_types = {"n_head_true": ("n_head", True), "n_layer_str": ("n_layer", "1"), "block_zero": ("block_size", 0)}
    for name, (field, value) in broken_types.items():
        shutil.copytree(d / "lm", d / name)
        config = json.loads((d / name / "config.json").read_text())
        config["model"][field] = value
        (d / name / "config.json").write_text(json.dumps(config))
    shutil.copytree(d / "rm", d / "rm_copy")  # the fixture's reward model, as --init / --policy / evaluate
    shutil.copytree(d / "lm", d / "deep_config")
    (d / "deep_config" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    # a checkpoint whose (hash-consistent) train state is a pickle that would run code
    shutil.copytree(d / "lm", d / "evil_state")
    torch.save({"step": 1, "x": Evil()}, d / "evil_state" / "train_state.pt")
    config = json.loads((d / "evil_state" / "config.json").read_text())
    config["files"]["train_state.pt"] = ckpt._sha256_file(d / "evil_state" / "train_state.pt")
    (d / "evil_state" / "config.json").write_text(json.dumps(config))
    shutil.copytree(d / "lm", d / "at_step_5")  # a checkpoint further along than the run asked for
    torch.save({"step": 5}, d / "at_step_5" / "train_state.pt")
    config = json.loads((d / "at_step_5" / "config.json").read_text())
    config["files"]["train_state.pt"] = ckpt._sha256_file(d / "at_step_5" / "train_state.pt")
    (d / "at_step_5" / "config.json").write_text(json.dumps(config))
    (d / "deep.jsonl").write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (d / "folder.jsonl").mkdir()
    (d / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": 3}\n')
    (d / "regular_file").write_text("")
    return d


def run_script(script, argv, capsys, monkeypatch, stdin=None):
    """(exit code, stdout, stderr) of `python script.py argv`, run in this process."""
    monkeypatch.setattr(sys, "stdin", stdin if stdin is not None else io.TextIOWrapper(io.BytesIO(b"")))
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        errors.run(module.main, [str(a) for a in argv])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    if isinstance(code, str):  # sys.exit("message"): Python prints the message and exits with status 1
        code, err = 1, err + code + "\n"
    return code, out, err


SFT = ["--steps", "2", "--batch-size", "2", "--skip-eval", "--device", "cpu"]

# (script, arguments ({d} = the fixture directory), exit code, text the one line must contain)
CASES = [
    ("train_base", ["--device", "tpu"], 2, "--device: unknown device 'tpu'"),
    ("train_base", ["--preset", "huge"], 2, "--preset: invalid choice: 'huge'"),
    ("train_base", ["--block-size", "1"], 2, "--block-size 1: must be at least 64 tokens"),
    ("train_sft", ["--init", "{d}/lm", "--block-size", "100000", "--out", "{d}/o1"] + SFT, 1,
     "--block-size 100000: the model's context holds only 64 tokens"),
    ("train_sft", ["--init", "{d}/lm", "--max-prompt-tokens", "500", "--out", "{d}/o2"] + SFT, 1,
     "--max-prompt-tokens 500: must be below the 64-token block"),
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/regular_file/sub"] + SFT, 1,
     "--out {d}/regular_file/sub: {d}/regular_file is a file, not a directory"),
    ("chat", ["--model", "{d}/n_head3", "--prompt", "hi"], 1, "{d}/n_head3/config.json: n_embd 32 must divide by n_head 3"),
    ("chat", ["--model", "{d}/misspelt", "--prompt", "hi"], 1, "{d}/misspelt/config.json: unknown GPTConfig fields ['n_layr']"),
    ("chat", ["--model", "{d}/no_model_section", "--prompt", "hi"], 1, "{d}/no_model_section/config.json: missing field 'model'"),
    ("chat", ["--model", "{d}/vocab_out_of_range", "--prompt", "hi"], 1, "{d}/vocab_out_of_range/config.json: vocab_size"),
    ("chat", ["--model", "{d}/rm", "--prompt", "hi"], 1, "{d}/rm holds a scalar model, a language model is needed"),
    ("chat", ["--model", "{d}/deep_config", "--prompt", "hi"], 1, "{d}/deep_config/config.json: invalid JSON"),
    ("train_ppo", ["--init", "{d}/lm", "--rm", "{d}/lm", "--out", "{d}/o7", "--skip-eval"], 1,
     "--rm {d}/lm holds a language model, not a reward model"),
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/evil_state", "--resume", "--data", "{d}/demos.jsonl"] + SFT, 1,
     "{d}/evil_state/train_state.pt: cannot load train state with weights_only=True"),
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/o3", "--data", "{d}/deep.jsonl"] + SFT, 1,
     "{d}/deep.jsonl:1: JSON nested too deeply to read"),
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/o4", "--data", "{d}/folder.jsonl"] + SFT, 1,
     "{d}/folder.jsonl is a directory"),
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/o5", "--data", "{d}/bad.jsonl"] + SFT, 1,
     "{d}/bad.jsonl:2: field 'response'"),
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/o6", "--data", "{d}/demos.jsonl", "--lr", "1e38"] + SFT, 1,
     "non-finite"),
    # flag values: zero, negative, huge, not a number
    ("train_sft", ["--holdout", "1"], 2, "--holdout: must be in [0, 1), got 1"),
    ("train_sft", ["--seed", "99999999999999999999999"], 2, "--seed: must be in [0, 2**62)"),
    ("train_sft", ["--block-size", "-5"], 2, "--block-size: must be a positive integer or -1, got -5"),
    ("train_sft", ["--max-prompt-tokens", "0"], 2, "--max-prompt-tokens: must be a positive integer or -1, got 0"),
    ("train_ppo", ["--max-prompt-tokens", "-4"], 2, "--max-prompt-tokens: must be a positive integer or -1, got -4"),
    ("train_dpo", ["--beta-sweep", "0.1,abc"], 2, "--beta-sweep: could not convert string to float: 'abc'"),
    ("minipost.evaluate", ["{d}/lm", "--best-of", "1,0"], 2, "--best-of 1,0: must be a positive integer, got 0"),
    ("minipost.evaluate", ["{d}/lm", "--best-of", "a"], 2, "--best-of a: invalid literal for int()"),
    # checkpoints of the wrong kind, config.json fields of the wrong type
    ("train_sft", ["--init", "{d}/rm_copy", "--out", "{d}/o8", "--data", "{d}/demos.jsonl"] + SFT, 1,
     "{d}/rm_copy holds a scalar model, a language model is needed"),
    ("train_rm", ["--init", "{d}/lm", "--policy", "{d}/rm_copy", "--out", "{d}/o9", "--steps", "1", "--device", "cpu"],
     1, "{d}/rm_copy holds a scalar model, a language model is needed"),
    ("train_grpo", ["--init", "{d}/lm", "--rm", "{d}/lm", "--reward", "rm", "--out", "{d}/o10", "--skip-eval"], 1,
     "--rm {d}/lm holds a language model, not a reward model"),
    ("train_grpo", ["--init", "{d}/lm", "--out", "{d}/o11", "--reward", "judge", "--max-new-tokens", "64",
                    "--skip-eval"], 1, "--max-new-tokens 64 leaves no room for a prompt in the context of 64 tokens"),
    ("minipost.evaluate", ["{d}/rm_copy"], 1, "{d}/rm_copy holds a scalar model, a language model is needed"),
    ("chat", ["--model", "{d}/n_head_true", "--prompt", "hi"], 1,
     "{d}/n_head_true/config.json: model.n_head must be an int, got True"),
    ("chat", ["--model", "{d}/n_layer_str", "--prompt", "hi"], 1,
     "{d}/n_layer_str/config.json: model.n_layer must be an int, got '1'"),
    ("chat", ["--model", "{d}/block_zero", "--prompt", "hi"], 1,
     "{d}/block_zero/config.json: model.block_size must be positive, got 0"),
    ("minipost.report", ["{d}/regular_file"], 1, "{d}/regular_file is not a directory of stage checkpoints"),
    # --out nowhere useful, --resume past the end
    ("train_sft", ["--init", "{d}/lm", "--out", "", "--data", "{d}/demos.jsonl"] + SFT, 1,
     "--out is empty: name the checkpoint directory to write"),
    ("train_sft", ["--init", "{d}/lm", "--out", "/proc/minipost", "--data", "{d}/demos.jsonl"] + SFT, 1,
     "--out /proc/minipost: cannot write in"),  # /proc on Linux (even as root), / elsewhere
    ("train_sft", ["--init", "{d}/lm", "--out", "{d}/at_step_5", "--resume", "--data", "{d}/demos.jsonl"] + SFT, 1,
     "--resume: {d}/at_step_5 is at step 5, past the 2 steps asked for"),
]


@pytest.mark.parametrize("script, argv, code, message", CASES, ids=[f"{c[0]} {' '.join(c[1][:2])}" for c in CASES])
def test_user_errors_are_one_line(d, capsys, monkeypatch, script, argv, code, message):
    argv = [a.replace("{d}", str(d)) for a in argv]
    got, _, err = run_script(script, argv, capsys, monkeypatch)
    assert got == code, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith(" ")]  # argparse prints its usage lines first
    assert len(lines) == 1 and message.replace("{d}", str(d)) in lines[0], err
    assert "Traceback" not in err
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    if out is not None and out.name in ("o1", "o2", "o3", "o4", "o5"):
        assert not out.exists()  # a run that fails before training leaves no empty --out directory behind


def test_chat_stdin_closed_non_utf8_and_overlong_prompt(d, capsys, monkeypatch):
    code, _, err = run_script("chat", ["--model", d / "lm"], capsys, monkeypatch, stdin=None)
    assert code == 0  # empty standard input: nothing to answer
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(SystemExit) as e:
        errors.run(importlib.import_module("chat").main, ["--model", str(d / "lm")])
    assert e.value.code == 1 and "standard input is closed; pass the instruction with --prompt" in capsys.readouterr().err
    stdin = io.TextIOWrapper(io.BytesIO(b"Say 1.\n\xff\xfe\n"))
    code, out, err = run_script("chat", ["--model", d / "lm", "--max-new-tokens", "2"], capsys, monkeypatch, stdin)
    assert code == 1 and err.strip() == "error: standard input line 2 is not UTF-8 text (byte 0xff at column 1)"
    assert out.count("model> ") == 1  # line 1 was answered before line 2 was read
    stdin = io.TextIOWrapper(io.BytesIO(("word " * 100).encode() + b"\n"))
    code, out, _ = run_script("chat", ["--model", d / "lm"], capsys, monkeypatch, stdin)
    assert code == 0 and "tokens; the context holds 64]" in out  # said, not silently skipped


def test_ctrl_c_says_where_the_last_checkpoint_is(d, capsys, monkeypatch):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_last_save", {"out_dir": "runs/sft", "step": 40})
    with pytest.raises(SystemExit) as e:
        errors.run(interrupted)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == ("interrupted: the last checkpoint is runs/sft (step 40, saved by this "
                                               "run); continue it with --resume")
    monkeypatch.setattr(ckpt, "_last_save", {"out_dir": str(d / "lm")})
    with pytest.raises(SystemExit):
        errors.run(interrupted)
    assert capsys.readouterr().err.strip() == (f"interrupted before this run saved anything: {d / 'lm'} holds the "
                                               "checkpoint it had before this run")


def test_pipeline_finds_its_stages_from_another_directory(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr("minipost.report.build_report", lambda d: Path(d) / "report.md")
    monkeypatch.chdir(tmp_path)
    # base was killed after a periodic checkpoint: the pipeline continues it instead of starting over
    ckpt.save_checkpoint(tmp_path / "checkpoints" / "base", torch.nn.Linear(2, 2),
                         {"metrics": {"unfinished_at_step": 10}}, train_state={"step": 10})
    importlib.import_module("pipeline").main(["--micro", "--only", "base,sft"])
    scripts = [Path(cmd[1]) for cmd in commands]
    assert [s.name for s in scripts] == ["train_base.py", "train_sft.py"] and all(s.is_file() for s in scripts)
    assert "--resume" in commands[0] and "--overwrite" in commands[1]
