"""Fixtures shared by the error and resume tests: tiny random checkpoints and small data files, made in a
fraction of a second (no training), so the scripts can run on them in-process."""

import json

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
