"""
Export a minipost checkpoint as a Hugging Face `transformers` GPT-2 directory, so the model leaves this repository:

    python -m minipost.export checkpoints/sft exported/sft     # a language model -> GPT2LMHeadModel
    python -m minipost.export checkpoints/rm exported/rm       # a reward model -> GPT2ForSequenceClassification
    python -m minipost.export checkpoints/ppo exported/ppo --overwrite   # replace an earlier export

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/sft")
    tok = AutoTokenizer.from_pretrained("exported/sft")

Nothing here imports transformers: the files are written by hand, from what each one means.

  model.safetensors      the weights in Hugging Face's GPT-2 names ("transformer.h.0.attn.c_attn.weight", ...).
                         GPT-2's original code used Conv1D layers whose weight is (in, out); minipost's nn.Linear
                         is (out, in). So c_attn, attn.c_proj, c_fc and mlp.c_proj are transposed on the way out,
                         the inverse of GPT.from_pretrained. lm_head is tied to wte and not stored.
  config.json            GPT2Config's fields: shape, tanh GELU ("gelu_new"), LayerNorm eps 1e-5, token ids.
  vocab.json, merges.txt the byte-level BPE in GPT-2's own file format, rebuilt from the tiktoken ranks
  tokenizer.json         (minipost/gpt2.tiktoken) restricted to the model's vocabulary (see bpe_files).
  tokenizer_config.json  special tokens and the chat template (Jinja) that renders minipost's prompt.
  generation_config.json (language models) eos / pad token ids for `generate`.

Reward models. minipost's score is (head(h) - shift) / scale at the last real token, where head has a bias and
shift/scale are the frozen normalization of train_rm.py. Hugging Face's GPT2ForSequenceClassification computes
score(h) with a bias-free Linear. Two changes make it score exactly what minipost scores:
  * the normalization and the bias are folded into the weights: score.weight = head.weight / scale, and the
    constant c = (head.bias - shift) / scale moves into ln_f's bias, whose only reader in a classifier is `score`:
    ln_f.bias += c * w / (w . w) adds w . (c w / (w . w)) = c to every score (see fold_reward_head).
  * "the last token". HF does not read the attention mask: it takes the rightmost token that is not the pad id.
    GPT-2 pads with EOS, and a scored response ends WITH an EOS, so that rule reads one token early (pad = EOS,
    docs/pitfalls.md 1, in a loader). The export adds a pad token `<|pad|>` with an id of its own (the vocabulary
    size; one extra, all-zero embedding row that no real token uses), and the tokenizer pads with it.

Loading back: minipost reads an exported language model with `--init OUT_DIR` (GPT.from_pretrained): the weights
are bitwise the ones exported. An exported reward model loads back as a GPTScalar (common.load_model, via
GPTScalar.from_pretrained in model.py) with the folded head: the same scores (up to float rounding), and exporting it again
writes the same bytes.
"""

import argparse
import json
from functools import lru_cache
from pathlib import Path

import torch

from minipost import checkpoint as ckpt
from minipost import common, lora
from minipost.errors import UserError
from minipost.model import GPTScalar, read_hf_config
from minipost.tokenizer import EOT, TEMPLATE, Tokenizer, _gpt2_ranks

PAD = "<|pad|>"  # the reward model's pad token (see the docstring): an id minipost's tokenizer never produces
# GPT-2's Conv1D layers store (in, out); minipost's nn.Linear stores (out, in)
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Files a Hugging Face directory may hold that would override or contradict an export (a chat_template.jinja wins
# over tokenizer_config.json's template; a sharded index over model.safetensors): --overwrite removes them.
STALE = ("config.json", "generation_config.json", "chat_template.jinja", "chat_template.json", "added_tokens.json",
         "pytorch_model.bin", "pytorch_model.bin.index.json", "model.safetensors.index.json")

# -----------------------------------------------------------------------------
# Weights: minipost's state dict -> Hugging Face's GPT-2 names and layouts


def hf_tensors(state: dict, n_layer: int, prefix: str = "") -> dict:
    """{"transformer.<name>": tensor} for GPT2Model from a minipost GPT state dict (keys "<prefix>transformer.*").

    Conv1D weights are transposed. A model built with bias=False has no biases; GPT-2 has them, so they are zeros
    (the same function)."""
    out = {}
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[name] = state.get(f"{prefix}transformer.{name}")
    for i in range(n_layer):
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            for kind in ("weight", "bias"):
                name = f"h.{i}.{part}.{kind}"
                w = state.get(f"{prefix}transformer.{name}")
                if w is not None and name.endswith(TRANSPOSED):
                    w = w.t()  # (out, in) -> (in, out)
                out[name] = w
    for name, w in out.items():  # only biases can be missing (bias=False): zeros of the weight's output size
        if w is None:
            weight = out[name.removesuffix(".bias") + ".weight"]
            out[name] = torch.zeros(weight.shape[-1] if weight.dim() == 2 else weight.shape[0])
    return {f"transformer.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def fold_reward_head(head_w, head_b, shift, scale, ln_f_bias) -> tuple[torch.Tensor, torch.Tensor]:
    """(score.weight (1, C), ln_f.bias (C,)) of a bias-free classifier that scores (head(h) - shift) / scale.

    h = g * n + beta is ln_f's output (n: the normalized residual); the score is w . h + c with w = head_w / scale
    and c = (head_b - shift) / scale. Adding d = c w / (w . w) to beta adds w . d = c: the constant rides on ln_f's
    bias. Computed in float64, stored in float32; the check below bounds what float32 storage costs."""
    w = (head_w.double() / scale.double()).float()  # (1, C), as stored
    c = float((head_b.double() - shift.double()) / scale.double())
    w64 = w.double().view(-1)
    norm2 = float(w64 @ w64)
    if norm2 == 0.0:
        if c != 0.0:
            raise UserError(f"the reward head's weight is all zeros: the reward is the constant {c:g}, which a "
                            f"bias-free classifier cannot output")
        return w, ln_f_bias.clone()
    beta = (ln_f_bias.double() + c * w64 / norm2).float()  # (C,)
    added = float(w64 @ (beta.double() - ln_f_bias.double()))  # what the stored numbers add to every score
    if abs(added - c) > 1e-5 * max(1.0, abs(c)):
        raise UserError(f"folding the reward head's bias into ln_f loses precision (adds {added:.6g}, needs {c:.6g})")
    return w, beta


# -----------------------------------------------------------------------------
# Tokenizer: tiktoken ranks -> GPT-2's byte-level BPE files


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict:
    """GPT-2's byte -> printable character map. Its BPE files spell every byte as a visible character: the 188
    printable Latin-1 bytes stand for themselves, the other 68 (controls, space, ...) become chr(256 + k) in
    byte order -- so a space is 'Ġ' (chr(288)) and a newline 'Ċ'."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def spell(token: bytes) -> str:
    """A token's bytes as GPT-2's vocab.json writes them."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def _last_merge(token: bytes, ranks: dict) -> tuple[bytes, bytes]:
    """The two tokens whose merge made `token`: byte-pair encode its bytes with the lower ranks only (tiktoken's
    algorithm: repeatedly merge the adjacent pair whose merged token has the lowest rank); two parts remain."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], limit)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


@lru_cache(maxsize=2)
def bpe_files(eos_id: int) -> tuple[dict, list]:
    """(vocab {spelled token: id}, merges [(left, right)] in priority order) of GPT-2's BPE cut to ranks < eos_id.

    tiktoken stores only ranks (token -> id, the order merges were learned in); Hugging Face's BPE wants the merge
    list. Each multi-byte token is the merge of two lower-ranked tokens, and its rank is that merge's priority;
    which two is what BPE itself gives on the token's bytes (_last_merge). For the full vocabulary this recovers
    GPT-2's published merges.txt, one merge per token (50,000)."""
    ranks = {t: r for t, r in _gpt2_ranks().items() if r < eos_id}
    vocab = {spell(t): r for t, r in ranks.items()}
    vocab[EOT] = eos_id
    merges = [_last_merge(t, ranks) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    return vocab, [(spell(a), spell(b)) for a, b in merges]


def chat_template() -> str:
    """A Jinja chat template that renders exactly what minipost renders (data.render_conversation).

    user         "### Instruction:\\n{content}\\n\\n" then "### Response:\\n" (the generation prompt: always
                 between turns, and at the end when add_generation_prompt=True)
    assistant    content + "\\n\\n" between turns; the last one (a training example) ends with the EOS token
    system       content + "\\n\\n"
    """
    head, tail = TEMPLATE.split("{instruction}")  # "### Instruction:\n", "\n\n### Response:\n"
    response = tail.lstrip("\n")  # "### Response:\n": what add_generation_prompt adds
    between = tail[: len(tail) - len(response)]  # "\n\n"
    q = json.dumps  # a JSON string is a valid Jinja string literal ("\n" escapes included)
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{- {q(head)} + message['content'] + {q(between)} -}}}}"
        f"{{%- if not loop.last or add_generation_prompt -%}}{{{{- {q(response)} -}}}}{{%- endif -%}}"
        "{%- elif message['role'] == 'assistant' and loop.last -%}"
        "{{- message['content'] + eos_token -}}"
        "{%- else -%}"
        f"{{{{- message['content'] + {q(between)} -}}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def _added_token(content: str, id_: int) -> dict:
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_files(tok: Tokenizer, block_size: int, pad_id: int | None) -> dict:
    """{file name: JSON-able object or text} of the tokenizer. pad_id None: pad with EOS (language models)."""
    vocab, merges = bpe_files(tok.eos_id)
    special = {tok.eos_id: EOT}
    if pad_id is not None:
        special[pad_id] = PAD
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}  # GPT-2's split regex
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(c, i) for i, c in special.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {"type": "ByteLevel", **byte_level, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False,  # (later fields keep their defaults: old readers)
                  "vocab": {**vocab, **({PAD: pad_id} if pad_id is not None else {})},
                  "merges": [f"{a} {b}" for a, b in merges]},  # byte-level spellings never contain a space
    }
    pad = PAD if pad_id is not None else EOT
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": pad}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **specials,
        "add_bos_token": False,  # minipost never prepends a BOS
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text (" ." stays " .")
        "errors": "replace",
        "model_max_length": block_size,
        # generation pads prompts on the left (positions come from the mask); a classifier reads positions 0..T-1
        # and would shift them under left padding, so a reward model pads on the right
        "padding_side": "right" if pad_id is not None else "left",
        "added_tokens_decoder": {str(i): {k: v for k, v in _added_token(c, i).items() if k != "id"}
                                 for i, c in special.items()},
        "chat_template": chat_template(),
    }
    return {
        "vocab.json": {**vocab, **({PAD: pad_id} if pad_id is not None else {})},
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": config,
        "special_tokens_map.json": specials,
    }


# -----------------------------------------------------------------------------
# config.json


def hf_config(model_config, architecture: str, vocab_size: int, eos_id: int, pad_id: int, extra: dict) -> dict:
    """GPT2Config's fields for a minipost GPTConfig (dropout kept for fine-tuning; off in eval mode anyway)."""
    c = model_config
    return {
        "architectures": [architecture],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",  # tanh GELU
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": "float32",
        **extra,
    }


# -----------------------------------------------------------------------------
# The export


def check_out_dir(source: str, out_dir: Path, overwrite: bool):
    """Refuse before any work: a file, the checkpoint itself, a minipost checkpoint, or files without --overwrite."""
    if not str(out_dir).strip():
        raise UserError("OUT_DIR is empty: name the directory to write")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and Path(source).exists() and out_dir.resolve() == Path(source).resolve():
        raise UserError(f"{out_dir} is the checkpoint being exported; write the export to another directory")
    if ckpt.has_checkpoint(out_dir) and "model_type" not in read_hf_config(out_dir / "config.json"):
        raise UserError(f"{out_dir} holds a minipost checkpoint; write the export to another directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} is not empty; pass --overwrite to replace the files of an earlier export")


def export(source: str, out_dir, overwrite: bool = False) -> dict:
    """Write the Hugging Face directory of checkpoint `source` (anything common.load_model reads); a summary back."""
    out_dir = Path(out_dir)
    check_out_dir(source, out_dir, overwrite)
    model, tok, config = common.load_model(source, "cpu", kind=None)
    # LoRA adapters (--lora-save adapters come back applied): W + (alpha/r) B A, plain weights
    state = lora.merged_state_dict(model) if lora.has_adapters(model) else model.state_dict()
    scalar = isinstance(model, GPTScalar)
    cfg = model.config
    if tok.vocab_size != cfg.vocab_size:
        raise UserError(f"{source}: tokenizer of {tok.vocab_size} tokens, the model has {cfg.vocab_size} embeddings")
    meta = {"minipost": {"source": str(source), "stage": config.get("stage"), "kind": "scalar" if scalar else "lm",
                         **({"world_seed": config["world_seed"]} if "world_seed" in config else {})}}
    if scalar:
        tensors = hf_tensors(state, cfg.n_layer, prefix="gpt.")
        score, ln_f_bias = fold_reward_head(state["head.weight"], state["head.bias"], state["reward_shift"],
                                            state["reward_scale"], tensors["transformer.ln_f.bias"])
        tensors["transformer.ln_f.bias"] = ln_f_bias
        tensors["score.weight"] = score
        pad_id = cfg.vocab_size  # one more row: the pad token's own embedding (never attended to)
        wte = tensors["transformer.wte.weight"]
        tensors["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(1, wte.size(1))])
        meta["minipost"]["added_pad_token"] = pad_id
        hf = hf_config(cfg, "GPT2ForSequenceClassification", cfg.vocab_size + 1, tok.eos_id, pad_id,
                       {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, **meta})
    else:
        tensors = hf_tensors(state, cfg.n_layer)
        pad_id = None
        hf = hf_config(cfg, "GPT2LMHeadModel", cfg.vocab_size, tok.eos_id, tok.eos_id, meta)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in STALE:  # config.json first: until the new one is written, the directory loads as nothing
        (out_dir / name).unlink(missing_ok=True)
    ckpt.write_safetensors(out_dir / "model.safetensors", tensors, metadata={"format": "pt"})
    for name, content in tokenizer_files(tok, cfg.block_size, pad_id).items():
        if isinstance(content, str):
            ckpt.atomic_write_bytes(out_dir / name, content.encode("utf-8"))
        else:
            _write_json(out_dir / name, content)
    if not scalar:
        _write_json(out_dir / "generation_config.json",
                    {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id})
    _write_json(out_dir / "config.json", hf)  # last: a directory with a config.json is a complete export
    return {"out_dir": str(out_dir), "architecture": hf["architectures"][0], "vocab_size": hf["vocab_size"],
            "eos_id": tok.eos_id, "pad_id": hf["pad_token_id"], "n_params": sum(t.numel() for t in tensors.values())}


def _write_json(path: Path, obj):
    # ensure_ascii=False keeps the byte-level spellings readable ("Ġthe"); the file is UTF-8. The big tokenizer
    # files go on one line (indenting 100k entries costs a second and makes them no easier to read)
    indent = None if len(obj) > 1000 or path.name == "tokenizer.json" else 2
    ckpt.atomic_write_bytes(path, (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8"))


# -----------------------------------------------------------------------------
# The way back: an exported reward model (or any GPT-2 reward model in this layout) as a GPTScalar


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        description="python -m minipost.export CHECKPOINT OUT_DIR: write a directory that Hugging Face transformers "
                    "loads (AutoModelForCausalLM / AutoModelForSequenceClassification, AutoTokenizer)")
    p.add_argument("checkpoint", help="a minipost checkpoint directory (language model or reward model, LoRA "
                                      "adapters included), or anything --init takes")
    p.add_argument("out_dir", help="the directory to write (created; must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export in OUT_DIR")
    args = p.parse_args(argv)
    info = export(args.checkpoint, args.out_dir, args.overwrite)
    auto = "AutoModelForSequenceClassification" if info["architecture"].endswith("Classification") \
        else "AutoModelForCausalLM"
    print(f"wrote {info['out_dir']}: {info['architecture']}, {info['n_params'] / 1e6:.2f}M parameters, "
          f"vocabulary {info['vocab_size']} (eos {info['eos_id']}, pad {info['pad_id']})")
    print(f"load it with transformers.{auto}.from_pretrained({info['out_dir']!r}) and "
          f"AutoTokenizer.from_pretrained({info['out_dir']!r})")


if __name__ == "__main__":
    from minipost import errors

    errors.run(main)
