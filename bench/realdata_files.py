"""
Small files in the formats of the real datasets and weights, written on the spot (nothing downloaded): a
GPT-2-shaped model in Hugging Face's `save_pretrained` layout with random weights, Alpaca JSON, Dolly JSONL,
chat JSONL and HH-RLHF transcripts (.jsonl.gz) -- with dialogues far longer than the context, like the real
HH-RLHF rows. tests/test_realdata.py runs docs/gpu.md's commands on them at a tiny shape, and
bench/gpu_smoke.py at GPT-2's real shape on a GPU.
"""

import gzip
import json
import re
import shlex
from pathlib import Path

import torch

from minipost.checkpoint import write_safetensors
from minipost.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 512  # the tiny model's context: the README's --block-size 512 fits it exactly, long dialogues exceed it
TINY = dict(n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=1, vocab_size=4096)  # 64-wide heads, as GPT-2's
GPT2_SHAPE = dict(n_positions=1024, n_embd=768, n_layer=12, n_head=12, vocab_size=50257)  # gpt2 (124M)


def gpu_commands() -> list[list[str]]:
    """The commands of docs/gpu.md's first bash block, continuation lines joined, comments dropped."""
    text = (ROOT / "docs" / "gpu.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


# -----------------------------------------------------------------------------
# Files in the real formats


def write_hf_gpt2(directory: Path, shape: dict = TINY, seed: int = 0) -> Path:
    """A GPT-2-shaped model as Hugging Face's save_pretrained writes it: "transformer."-prefixed keys, Conv1D
    weights stored (in, out), no lm_head (tied), and a config.json with model_type. No transformers needed.
    shape: Hugging Face's config names (n_positions, n_embd, n_layer, n_head, vocab_size); GPT2_SHAPE is gpt2's."""
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(block_size=shape["n_positions"], vocab_size=shape["vocab_size"], n_layer=shape["n_layer"],
                         n_head=shape["n_head"], n_embd=shape["n_embd"]))
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    tensors = {}
    for key, t in ours.state_dict().items():
        if key == "lm_head.weight":
            continue
        key = key if key.startswith("transformer.") else "transformer." + key
        tensors[key] = (t.t() if key.endswith(conv1d) else t).contiguous().clone()
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", tensors, {"format": "pt"})
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
              "layer_norm_epsilon": 1e-5, **shape}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def sentence(i: int) -> str:
    return f"Sentence number {i} talks about the weather in a long and winding way. "


def long_text(n_sentences: int, start: int = 0) -> str:
    return "".join(sentence(start + i) for i in range(n_sentences))


def hh_transcript(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in turns)


def write_hh(path: Path, n: int = 24) -> Path:
    """HH-RLHF rows: whole transcripts that share the dialogue and differ in the last answer. Every third
    dialogue is ~1,200 tokens (far over the context), like the longest HH-RLHF rows."""
    rows = []
    for i in range(n):
        earlier = [(long_text(60, i) if i % 3 == 0 else f"Hello {i}", f"Hi there, friend {i}.")]
        question = f"What should I do about problem {i}?"
        chosen = hh_transcript(earlier + [(question, f"A careful, helpful answer number {i}.")])
        rejected = hh_transcript(earlier + [(question, f"Go away {i}.")])
        rows.append({"chosen": chosen, "rejected": rejected})
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def write_alpaca(path: Path, n: int = 24) -> Path:
    rows = [{"instruction": f"Describe item {i}.", "input": long_text(40, i) if i % 4 == 0 else "",
             "output": f"Item {i} is a thing. " * (1 + i % 3)} for i in range(n)]
    path.write_text(json.dumps(rows, indent=2))
    return path


def write_dolly(path: Path, n: int = 16) -> Path:
    rows = [{"instruction": f"Summarize passage {i}.", "context": long_text(50, i) if i % 2 else "",
             "response": f"Passage {i} is about weather.", "category": "summarization"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_chat(path: Path, n: int = 16) -> Path:
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": long_text(30, i) if i % 2 else f"Hi {i}"},
                          {"role": "assistant", "content": f"Hello {i}."},
                          {"role": "user", "content": f"And number {i}?"},
                          {"role": "assistant", "content": f"Number {i} is fine."}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
