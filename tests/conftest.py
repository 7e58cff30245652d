"""Fixtures shared by the error and resume tests: tiny random checkpoints and small data files, made in a
fraction of a second (no training), so the scripts can run on them in-process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost import common
from minipost.model import GPT, GPTConfig, GPTScalar
from minipost.tokenizer import Tokenizer

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=512, dropout=0.0)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """lm/ (a language model), rm/ (a reward model), demos.jsonl, pairs.jsonl, prompts.jsonl."""
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tok = Tokenizer(TINY["vocab_size"])
    common.save_stage(d / "lm", GPT(GPTConfig(**TINY)), stage="sft", kind="lm", tokenizer=tok, args=None,
                      metrics={}, train_state={"step": 1})
    common.save_stage(d / "rm", GPTScalar(GPTConfig(**TINY)), stage="rm", kind="scalar", tokenizer=tok, args=None,
                      metrics={})
    _jsonl(d / "demos.jsonl", [{"prompt": f"Say {i}.", "response": f"{i} it is"} for i in range(12)])
    _jsonl(d / "pairs.jsonl", [{"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": f"No, {i + 1} and more."}
                               for i in range(12)])
    _jsonl(d / "prompts.jsonl", [{"prompt": f"Count to {i}."} for i in range(12)])
    return d


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """The whole pipeline on micro settings, once per test session: (checkpoint dir, its output). Shared by
    tests/test_scripts.py (every stage end to end, the GPU smoke script on CPU) and tests/test_notebook.py (which
    copies it, so the notebook only rebuilds the report)."""
    d = tmp_path_factory.mktemp("micro")
    proc = subprocess.run([sys.executable, "pipeline.py", "--micro", "--checkpoints", str(d)], capture_output=True,
                          text=True, timeout=1800, cwd=Path(__file__).resolve().parents[1])  # ~2 min, quiet 2 cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d, proc.stdout
