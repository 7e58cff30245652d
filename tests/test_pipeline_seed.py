"""pipeline.py --seed N: every stage gets the seed, the world too, under checkpoints/seed-N; the best-of-n stage
runs as a module from the repository root, whatever the working directory."""

import importlib
import os
import subprocess
from pathlib import Path

from minipost import data

ROOT = Path(__file__).resolve().parents[1]


def test_seed_reaches_every_stage_and_the_world(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr("minipost.report.build_report", lambda d: Path(d) / "report.md")
    monkeypatch.delenv("MINIPOST_WORLD_SEED", raising=False)
    monkeypatch.chdir(tmp_path)
    importlib.import_module("pipeline").main(["--micro", "--seed", "3"])
    assert os.environ.pop("MINIPOST_WORLD_SEED") == "3"  # the stages' data loaders build world 3
    names = [Path(cmd[1]).name if cmd[1] != "-m" else cmd[2] for cmd, _ in calls]
    assert names[:4] == ["train_base.py", "train_sft.py", "train_rm.py", "minipost.evaluate"]
    for cmd, _ in calls:
        assert cmd[cmd.index("--seed") + 1] == "3", cmd
    base = calls[0][0]
    assert base[base.index("--world-seed") + 1] == "3" and base[base.index("--out") + 1] == "checkpoints/seed-3/base"
    # best-of-n: python -m minipost.evaluate in the repository root, with absolute paths into this directory
    cmd, kw = calls[3]
    assert kw.get("cwd") == ROOT and cmd[3] == str(tmp_path / "checkpoints" / "seed-3" / "sft")


def test_world_seed_from_the_environment(monkeypatch):
    monkeypatch.setenv("MINIPOST_WORLD_SEED", "0")
    w0 = data._world()
    monkeypatch.setenv("MINIPOST_WORLD_SEED", "1")
    w1 = data._world()
    assert w0 is not w1 and [p["prompt"] for p in w0.eval_prompts] != [p["prompt"] for p in w1.eval_prompts]
    monkeypatch.setenv("MINIPOST_WORLD_SEED", "x")
    try:
        data._world()
    except data.DataError as e:
        assert "MINIPOST_WORLD_SEED" in str(e)
    else:
        raise AssertionError("a non-integer seed must be a DataError")


def test_a_stage_refuses_a_checkpoint_of_another_world(tiny_dir, tmp_path, monkeypatch):
    """Seed 1 splits the facts differently: training world-0 data on a world-1 model would leak its held-out facts."""
    assert data.check_world_seed("demos.jsonl", {"world_seed": 1}, "x") is None  # real data: no toy world
    assert data.check_world_seed("world", {}, "x") is None  # a checkpoint not trained in the toy world
    monkeypatch.setenv("MINIPOST_WORLD_SEED", "1")
    assert data.check_world_seed("world", {"world_seed": 1}, "x") is None
    monkeypatch.delenv("MINIPOST_WORLD_SEED")
    import shutil
    import json
    import pytest
    import train_sft

    init = tmp_path / "lm"
    shutil.copytree(tiny_dir / "lm", init)
    config = json.loads((init / "config.json").read_text())
    (init / "config.json").write_text(json.dumps({**config, "world_seed": 1}))
    with pytest.raises(data.DataError, match=r"lm/config.json: world_seed is 1, but this run builds toy world 0"):
        train_sft.main(["--init", str(init), "--data", "world", "--out", str(tmp_path / "sft"), "--steps", "1"])
    assert not (tmp_path / "sft" / "model.safetensors").exists()


def test_sft_records_the_world_it_learned_from(tiny_dir, tmp_path, monkeypatch):
    """The later stages evaluate on the held-out split of the world recorded in the SFT checkpoint."""
    import json
    import train_sft

    monkeypatch.setenv("MINIPOST_WORLD_SEED", "2")
    train_sft.main(["--init", str(tiny_dir / "lm"), "--data", str(tiny_dir / "demos.jsonl"), "--out",
                    str(tmp_path / "a"), "--steps", "1", "--batch-size", "2", "--skip-eval"])
    assert json.loads((tmp_path / "a" / "config.json").read_text())["world_seed"] == 0  # not the world's data
    train_sft.main(["--init", str(tiny_dir / "lm"), "--data", "world", "--out", str(tmp_path / "b"), "--steps", "1",
                    "--batch-size", "2", "--skip-eval"])
    assert json.loads((tmp_path / "b" / "config.json").read_text())["world_seed"] == 2  # the world it learned from
