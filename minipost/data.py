"""
Data for every stage: reading dataset files, turning rows into (prompt, response) text, tokenizing,
and padding batches with the masks that say which tokens are trained on.

Three layers, read them in order:

1. Reading files. `read_records(path)` reads .jsonl, .jsonl.gz and .json (an array, like Alpaca) and
   gives back (line number, row) pairs. Every problem is reported as `PATH:LINE: what is wrong`, so a
   bad row in a 15,000-line file can be found and fixed in an editor.

2. Loaders. `load_sft`, `load_pairs`, `load_prompts` turn rows of the common public formats (Alpaca,
   Dolly, chat messages, HH-RLHF transcripts, UltraFeedback) into plain dicts. Their `prompt` is ALWAYS
   the full text the model sees before the response, i.e. it already contains the chat template:

       ### Instruction:
       {instruction}

       ### Response:
       <- the response starts here

   Each loader returns (items, stats): stats counts what was read and what was dropped and why, so
   nothing disappears silently.

3. Tokens and batches. `encode_example` applies the one joining rule (tokenize the prompt, tokenize the
   response, concatenate, append EOS) and the truncation policy; `collate` pads a batch and builds the
   masks FROM LENGTHS, never from token ids. That matters because GPT-2 has no pad token: we pad with
   the EOS id, so `input_ids != pad_id` would also hide the real EOS that ends every response, and the
   model would never learn to stop (docs/pitfalls.md, pitfall 1).

Named datasets are downloaded on first use into `checkpoints/data/` (see DATASETS and download.py);
nothing touches the network at import time.
"""

import gzip
import json
import math
import os
import random
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

from minipost.download import DownloadError, download_all, sha256_of
from minipost.tokenizer import chat_prompt

# -----------------------------------------------------------------------------
# Named datasets: name -> the files to download, each at a FIXED commit (a URL on a branch like `main`
# can change under you; a commit cannot), with a checksum read from that commit's git tree:
#   sha256    a Git LFS file: the pointer file that git stores holds the sha256 of the real bytes
#   git_sha1  a plain git file: the blob hash `git ls-tree` shows (SHA-1 of "blob <size>\0" + the bytes)
# Both were read from the repositories' history, not computed from a download (this code was written on a
# machine without network). A download that does not match is refused. Whatever the pin, the sha256 of the
# files a run trained on is recorded in its checkpoint (see data_fingerprint).

_ALPACA_COMMIT = "761dc5bfbdeeffa89b8bff5d038781a4055f796a"  # tatsu-lab/stanford_alpaca, 2023-05-29
_DOLLY_COMMIT = "2305eb7f2f4b3beb2379f34c6addf335b46c4b43"  # databrickslabs/dolly, 2023-04-13 (its last data edit)
_HH_COMMIT = "354e5c3cb8960630860dd5774a6ac2a58313bf4d"  # anthropics/hh-rlhf, 2023-09-19

DATASETS = {
    "alpaca": {  # 52k instructions written by text-davinci-003; a JSON array of {instruction, input, output}
        "kind": "sft",
        "files": [{"url": f"https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/{_ALPACA_COMMIT}/"
                          "alpaca_data.json",
                   "file": "alpaca_data.json", "git_sha1": "3779ddbc040543ab1834ef216c983d6fcc06cc9a"}],
    },
    "dolly": {  # 15k instructions written by Databricks employees; {instruction, context, response, category}
        "kind": "sft",
        "files": [{"url": f"https://raw.githubusercontent.com/databrickslabs/dolly/{_DOLLY_COMMIT}/"
                          "data/databricks-dolly-15k.jsonl",
                   "file": "databricks-dolly-15k.jsonl", "git_sha1": "9b0b912c478e7ccd61ce741ebb409ddf8c7c22e6"}],
    },
    "hh-rlhf": {  # Anthropic's helpful + harmless preferences; {chosen, rejected} whole transcripts
        "kind": "pairs",
        "files": [
            {"url": f"https://raw.githubusercontent.com/anthropics/hh-rlhf/{_HH_COMMIT}/harmless-base/train.jsonl.gz",
             "file": "hh-rlhf-harmless-base-train.jsonl.gz", "git_sha1": "df7c90b1bbd6093bda9c996e8aab9a46fa557dcf"},
            # a Git LFS file: raw.githubusercontent.com would serve the pointer, the media host serves the bytes
            {"url": f"https://media.githubusercontent.com/media/anthropics/hh-rlhf/{_HH_COMMIT}/"
                    "helpful-base/train.jsonl.gz",
             "file": "hh-rlhf-helpful-base-train.jsonl.gz",
             "sha256": "518a5bf288456fc9f3b7c980c54116fba0c52f274d3f4d344675d83e4058f6f4"},  # 16,200,131 bytes
        ],
    },
}
DEFAULT_CACHE_DIR = "checkpoints/data"


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, and the line when there is one."""


def dataset_files(name: str, cache_dir=DEFAULT_CACHE_DIR) -> list[Path]:
    """Download (once) the files of a named dataset and return their local paths.

    Offline, one DataError names every file still missing and where to put it (download_all).
    """
    files = [{**f, "dest": Path(cache_dir) / f["file"]} for f in DATASETS[name]["files"]]
    try:
        return download_all(files, desc=name)
    except DownloadError as e:
        raise DataError(f"{e}; or pass a file you have as --data PATH") from e


def data_fingerprint(source: str, cache_dir=DEFAULT_CACHE_DIR) -> dict:
    """What a checkpoint records about its data: {"source", "files": [{"path", "bytes", "sha256"}]}.

    The toy world is code, not a file: it is identified by its name (and the world seed in the args).
    Call after loading, when a named dataset's files are on disk.
    """
    if source.startswith("world"):
        return {"source": source, "files": []}
    paths = [Path(cache_dir) / f["file"] for f in DATASETS[source]["files"]] if source in DATASETS else [Path(source)]
    return {"source": source,
            "files": [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in paths]}


# -----------------------------------------------------------------------------
# 1. Reading files

def _type_name(value) -> str:
    """The name of a JSON value's type, for error messages ("got list", "got int", "got null")."""
    return {type(None): "null", dict: "object"}.get(type(value), type(value).__name__)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz."""
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a .json or .jsonl file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (EOFError, OSError, zlib.error) as e:  # truncated download, not gzip at all, bad CRC
        raise DataError(f"{path}: not a valid gzip file, or truncated ({e})") from e


def _decode_utf8(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from e


def _read_jsonl(path: Path, raw: bytes) -> list[tuple[int, dict]]:
    """One JSON object per line. Lines are split on b"\\n" BEFORE decoding, so line numbers count real
    lines even when a line holds invalid UTF-8 (and a U+2028 inside a string does not split a row)."""
    records = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if i == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # a UTF-8 byte-order mark, as some Windows editors write
        line = line.rstrip(b"\r")  # CRLF line endings
        if not line.strip():
            continue  # blank lines (and the empty piece after the final newline)
        text = _decode_utf8(line, path, i)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: invalid JSON ({e.msg}, column {e.colno})") from e
        except RecursionError as e:  # Python's parser recurses once per nesting level
            raise DataError(f"{path}:{i}: JSON nested too deeply to read") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {_type_name(row)}")
        records.append((i, row))
    return records


def _element_lines(text: str) -> list[int]:
    """The line on which each element of a (valid) top-level JSON array starts.

    json.loads does not say where each element was, so we walk the array again with raw_decode,
    which parses one value starting at an offset and returns where it ended.
    """
    decoder, ws = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    lines, line, pos = [], 1, 0
    i = ws.match(text, 0).end() + 1  # just after the opening '['
    while True:
        i = ws.match(text, i).end()
        if text[i] == "]":
            return lines
        line += text.count("\n", pos, i)  # count newlines incrementally: linear in the file size
        pos = i
        lines.append(line)
        _, i = decoder.raw_decode(text, i)
        i = ws.match(text, i).end()
        if text[i] == ",":
            i += 1


def _read_json_array(path: Path, raw: bytes) -> list[tuple[int, dict]]:
    """A JSON array of objects (Alpaca's format). Each record gets the line its element starts on."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte 0x{raw[e.start]:02x})") from e
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from e
    except RecursionError as e:  # Python's parser recurses once per nesting level
        raise DataError(f"{path}: JSON nested too deeply to read") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {_type_name(data)} "
                        f"(for one object per line, name the file .jsonl)")
    lines = _element_lines(text)
    for n, (row, line) in enumerate(zip(data, lines)):
        if not isinstance(row, dict):
            raise DataError(f"{path}: element {n} (line {line}): expected a JSON object, got {_type_name(row)}")
    return list(zip(lines, data))


def read_records(path) -> list[tuple[int, dict]]:
    """Read a .jsonl, .jsonl.gz, .json or .json.gz file into [(line number, row dict), ...].

    For .json arrays the line number is the line on which the element starts. Raises DataError naming
    the path (and line) for: a missing file, invalid UTF-8, invalid JSON, a row that is not an object,
    a truncated gzip, and a file with no rows at all.
    """
    path = Path(path)
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffixes not in (".jsonl", ".jsonl.gz", ".json", ".json.gz"):
        raise DataError(f"{path}: unsupported file type {suffixes or '(none)'}; "
                        f"expected .jsonl, .jsonl.gz or .json (an array of objects)")
    raw = _read_bytes(path)
    records = _read_jsonl(path, raw) if suffixes.startswith(".jsonl") else _read_json_array(path, raw)
    if not records:
        raise DataError(f"no examples in {path}")
    return records


# -----------------------------------------------------------------------------
# 2. Rows -> text. Field checks first: every error names the file, the line and the field.

def _str_field(row: dict, key: str, where: str, default=None) -> str:
    """row[key], which must be a string. Missing is an error unless a default is given."""
    if key not in row:
        if default is not None:
            return default
        raise DataError(f"{where}: field '{key}' is missing")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {_type_name(value)}")
    return value


def _margin_field(row: dict, where: str) -> float | None:
    """The optional numeric preference strength ('margin') of a pair; None when absent."""
    if row.get("margin") is None:
        return None
    m = row["margin"]
    if isinstance(m, bool) or not isinstance(m, (int, float)):  # bool is an int in Python: refuse it
        raise DataError(f"{where}: field 'margin' must be a number, got {_type_name(m)}")
    if not math.isfinite(m):
        raise DataError(f"{where}: field 'margin' must be finite, got {m}")
    return float(m)


def _with_context(instruction: str, context: str) -> str:
    """Alpaca's `input` / Dolly's `context` go after the instruction, separated by a blank line."""
    return instruction + "\n\n" + context if context.strip() else instruction


def _check_conversation(messages, where: str, field: str = "messages") -> list[dict]:
    """Validate a chat: a list of {role, content} in the order [system...,] user, assistant, user, ...

    Strict alternation keeps the rendering unambiguous: every assistant turn follows exactly one
    user turn, so the text before it always ends with "### Response:\\n".
    """
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of messages, got {_type_name(messages)}")
    expected, at_start = "user", True  # system messages are allowed only before the first user turn
    for i, msg in enumerate(messages):
        at = f"{where}: {field}[{i}]"
        if not isinstance(msg, dict):
            raise DataError(f"{at}: expected a JSON object, got {_type_name(msg)}")
        role, _ = _str_field(msg, "role", at), _str_field(msg, "content", at)
        if role == "system" and at_start:
            continue
        if role != expected:
            raise DataError(f"{at}: role '{role}', expected '{expected}' "
                            f"(a conversation is [system,] user, assistant, user, assistant, ...)")
        expected, at_start = ("assistant" if role == "user" else "user"), False
    if at_start:
        raise DataError(f"{where}: field '{field}' has no user message")
    return messages


def render_conversation(messages: list[dict]) -> str:
    """The prompt text for a chat that ends with a user turn.

    Rendering (one rule for SFT, pairs and prompts):
      system message    -> its content + "\\n\\n"   (plain text, before everything)
      user message      -> chat_prompt(content)     ("### Instruction:\\n...\\n\\n### Response:\\n")
      assistant message -> its content + "\\n\\n"   (an earlier answer, followed by the next instruction)
    so [user "Hi", assistant "Hello!", user "Bye"] renders as
      "### Instruction:\\nHi\\n\\n### Response:\\nHello!\\n\\n### Instruction:\\nBye\\n\\n### Response:\\n"
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a prompt conversation must end with a user message")
    parts = []
    for msg in messages:
        if msg["role"] == "user":
            parts.append(chat_prompt(msg["content"]))
        else:
            parts.append(msg["content"] + "\n\n")
    return "".join(parts)


def _chat_examples(messages: list[dict]) -> list[dict]:
    """One SFT example per assistant turn: the conversation before it is the prompt."""
    return [{"prompt": render_conversation(messages[:i]), "response": msg["content"]}
            for i, msg in enumerate(messages) if msg["role"] == "assistant"]


def _sft_row(row: dict, where: str) -> list[dict]:
    """The SFT examples of one row, whose format is detected from its keys."""
    if "messages" in row:  # chat: one example per assistant turn
        return _chat_examples(_check_conversation(row["messages"], where))
    if "instruction" in row and "output" in row:  # Alpaca
        instruction = _with_context(_str_field(row, "instruction", where), _str_field(row, "input", where, ""))
        return [{"prompt": chat_prompt(instruction), "response": _str_field(row, "output", where)}]
    if "instruction" in row and "response" in row:  # Dolly
        instruction = _with_context(_str_field(row, "instruction", where), _str_field(row, "context", where, ""))
        return [{"prompt": chat_prompt(instruction), "response": _str_field(row, "response", where)}]
    if "prompt" in row or "response" in row:  # plain: the prompt is the raw instruction
        return [{"prompt": chat_prompt(_str_field(row, "prompt", where)),
                 "response": _str_field(row, "response", where)}]
    raise DataError(f"{where}: unrecognized row; expected one of: {{instruction,output}} (Alpaca), "
                    f"{{instruction,response}} (Dolly), {{messages}}, {{prompt,response}}")


def world_seed() -> int:
    """The seed of the toy world this process builds: the environment variable MINIPOST_WORLD_SEED (default 0;
    pipeline.py --seed N sets it for its stages)."""
    seed = os.environ.get("MINIPOST_WORLD_SEED", "0")
    try:
        return int(seed)
    except ValueError:
        raise DataError(f"MINIPOST_WORLD_SEED must be an integer, got {seed!r}") from None


def _world():
    """The toy world (built once per process; loaders copy what they take from it), with world_seed()."""
    return _world_of(world_seed())


def check_world_seed(source: str, init_config: dict, init_dir) -> None:
    """A stage on toy-world data must build the world its starting checkpoint was trained in: another seed
    splits the facts into train and held-out differently, so its training data would hold the first world's
    held-out facts (and the evaluation would score the wrong split)."""
    if source != "world" or "world_seed" not in init_config:  # real data, or a checkpoint not from the toy world
        return
    if init_config["world_seed"] != world_seed():
        raise DataError(f"{Path(init_dir) / 'config.json'}: world_seed is {init_config['world_seed']}, but this run "
                        f"builds toy world {world_seed()} (MINIPOST_WORLD_SEED); run it with "
                        f"MINIPOST_WORLD_SEED={init_config['world_seed']} (pipeline.py --seed N sets it)")


@lru_cache(maxsize=2)
def _world_of(seed: int):
    from minipost.world import build_world  # imported lazily: only the toy-world sources need it
    # the loaders read demonstrations, pairs and prompts, never the corpus (its own random stream: the rest of
    # the world is the same without it)
    return build_world(seed=seed, n_docs=1)


def _records_of(source: str, kind: str, cache_dir) -> list[tuple[str, dict]]:
    """[(where, row)] for a named dataset or a file; `where` is "PATH:LINE" for error messages."""
    if source in DATASETS:
        if kind != "prompts" and DATASETS[source]["kind"] != kind:
            raise DataError(f"'{source}' is a {DATASETS[source]['kind']} dataset, not {kind} data")
        paths = dataset_files(source, cache_dir)
    else:
        path = Path(source)
        if not path.exists():
            names = ", ".join(["world", *DATASETS])
            raise DataError(f"'{source}' is neither a dataset name ({names}) nor an existing file")
        paths = [path]
    return [(f"{p}:{line}", row) for p in paths for line, row in read_records(p)]


def load_sft(source: str, cache_dir=DEFAULT_CACHE_DIR) -> tuple[list[dict], dict]:
    """Demonstrations for SFT: ([{"prompt", "response"}], stats).

    source: "world" (the toy world's demos), "alpaca", "dolly", or a PATH to .json/.jsonl/.jsonl.gz whose
    rows may be Alpaca, Dolly, chat ({messages}) or {prompt, response} (detected row by row).
    Examples with an empty (or all-whitespace) response are dropped and counted in stats["dropped_empty"];
    chat rows with no assistant turn (nothing to learn from) in stats["dropped_no_answer"].
    """
    n_no_answer = 0
    if source == "world":
        raw = [{"prompt": chat_prompt(d["prompt"]), "response": d["response"]} for d in _world().sft_demos]
        n_read = len(raw)
    else:
        records = _records_of(source, "sft", cache_dir)
        per_row = [_sft_row(row, where) for where, row in records]
        raw = [ex for examples in per_row for ex in examples]
        n_read, n_no_answer = len(records), sum(1 for examples in per_row if not examples)
    examples = [ex for ex in raw if ex["response"].strip()]
    return examples, {"read": n_read, "examples": len(examples), "dropped_empty": len(raw) - len(examples),
                      "dropped_no_answer": n_no_answer}


# --- preference pairs

HH_ASSISTANT = "\n\nAssistant:"  # HH-RLHF transcripts are "\n\nHuman: ...\n\nAssistant: ..." turns


def _hh_dialogue_to_messages(dialogue: str, where: str) -> list[dict]:
    """'\\n\\nHuman: q1\\n\\nAssistant: a1\\n\\nHuman: q2' -> [user q1, assistant a1, user q2].

    Two consecutive turns of the same speaker (rare in HH-RLHF) are merged into one, joined by a blank
    line, so that the conversation alternates as render_conversation expects.
    """
    pieces = re.split(r"\n\n(Human|Assistant):", dialogue)
    # pieces = [text before the first turn, role, text, role, text, ...]
    if pieces[0].strip() or len(pieces) < 3 or pieces[1] != "Human":
        raise DataError(f"{where}: cannot split the HH-RLHF transcripts: they must start with '\\n\\nHuman:'")
    messages = []
    for speaker, text in zip(pieces[1::2], pieces[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + text.strip()
        else:
            messages.append({"role": role, "content": text.strip()})
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: cannot split the HH-RLHF transcripts: "
                        f"the turn before the shared '\\n\\nAssistant:' is not a Human turn")
    return messages


def _common_prefix_len(a: str, b: str) -> int:
    """len of the longest common prefix, by binary search over slice comparisons (which run in C:
    a character-by-character Python loop would take minutes on HH-RLHF's 160k transcript pairs)."""
    lo, hi = 0, min(len(a), len(b))  # invariant: a[:lo] == b[:lo]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_hh(chosen: str, rejected: str, where: str = "") -> tuple[str, str, str]:
    """Split two HH-RLHF transcripts into (templated prompt, chosen response, rejected response).

    Both transcripts repeat the whole dialogue and differ in the final answer, so we split at the LAST
    "\\n\\nAssistant:" inside their common prefix (not simply the last one of each: in a few rows the two
    diverge in an earlier turn, and then each response holds the rest of its dialogue). The shared
    dialogue becomes a chat rendered with our template (the last Human turn is the instruction);
    each response loses its leading whitespace.
    """
    n = _common_prefix_len(chosen, rejected)
    cut = chosen.rfind(HH_ASSISTANT, 0, n)  # the marker must lie entirely inside the common prefix
    if cut < 0:
        raise DataError(f"{where}: cannot split the HH-RLHF transcripts: "
                        f"chosen and rejected share no '\\n\\nAssistant:' turn")
    messages = _hh_dialogue_to_messages(chosen[:cut], where)
    start = cut + len(HH_ASSISTANT)
    return render_conversation(messages), chosen[start:].lstrip(), rejected[start:].lstrip()


def _final_answer(conv, where: str, field: str) -> tuple[list[dict], str]:
    """UltraFeedback style: a message list whose last message is the assistant answer.
    Returns (the messages before it, the answer)."""
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field '{field}' must be a string or a non-empty list of messages, "
                        f"got {_type_name(conv)}")
    last = conv[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise DataError(f"{where}: field '{field}': the last message must be the assistant's answer")
    answer = _str_field(last, "content", f"{where}: {field}[{len(conv) - 1}]")
    if len(conv) > 1:  # earlier turns: the whole list must alternate, so the turn before the answer is a user's
        _check_conversation(conv, where, field)
    return conv[:-1], answer


def _pair_row(row: dict, where: str) -> dict:
    """One preference pair {"prompt", "chosen", "rejected"[, "margin"]} from one row."""
    if "prompt" in row:
        instruction = _str_field(row, "prompt", where)
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: field '{key}' is missing")
        if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
            # UltraFeedback: chosen/rejected are conversations ending with the answer.
            c_before, chosen = _final_answer(row["chosen"], where, "chosen")
            r_before, rejected = _final_answer(row["rejected"], where, "rejected")
            if c_before != r_before:
                raise DataError(f"{where}: 'chosen' and 'rejected' have different messages before their answers")
            # The earlier turns (usually just the user's question) are the prompt; without any, the
            # 'prompt' field is the instruction.
            prompt = render_conversation(c_before) if c_before else chat_prompt(instruction)
        else:
            chosen, rejected = _str_field(row, "chosen", where), _str_field(row, "rejected", where)
            prompt = chat_prompt(instruction)
    elif "chosen" in row and "rejected" in row:  # HH-RLHF: two whole transcripts
        prompt, chosen, rejected = split_hh(_str_field(row, "chosen", where),
                                            _str_field(row, "rejected", where), where)
    else:
        raise DataError(f"{where}: unrecognized row; expected {{prompt,chosen,rejected}} "
                        f"or {{chosen,rejected}} (HH-RLHF transcripts)")
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    margin = _margin_field(row, where)
    if margin is not None:
        pair["margin"] = margin
    return pair


def _filter_pairs(pairs: list[dict], n_read: int) -> tuple[list[dict], dict]:
    """Drop pairs that teach nothing (identical answers) or cannot be trained on (an empty answer)."""
    stats = {"read": n_read, "pairs": 0, "dropped_identical": 0, "dropped_empty": 0}
    kept = []
    for p in pairs:
        if p["chosen"] == p["rejected"]:
            stats["dropped_identical"] += 1  # a pair with no preference: its loss gradient is pure noise
        elif not p["chosen"].strip() or not p["rejected"].strip():
            stats["dropped_empty"] += 1
        else:
            kept.append(p)
    stats["pairs"] = len(kept)
    return kept, stats


def load_pairs(source: str, cache_dir=DEFAULT_CACHE_DIR) -> tuple[list[dict], dict]:
    """Preference pairs: ([{"prompt", "chosen", "rejected"[, "margin": float]}], stats).

    source: "world" (train pairs), "world-heldout" (the judge-labelled validation pairs), "hh-rlhf", or
    a PATH whose rows are {prompt, chosen, rejected} (strings, or UltraFeedback message lists), with an
    optional numeric margin, or HH-RLHF {chosen, rejected} transcripts.
    Pairs with chosen == rejected are dropped (stats["dropped_identical"]), as are pairs with an
    empty answer (stats["dropped_empty"]).
    """
    if source in ("world", "world-heldout"):
        world = _world()
        rows = world.preference_pairs if source == "world" else world.heldout_pairs
        pairs = []
        for r in rows:
            pair = {"prompt": chat_prompt(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
            if r.get("margin") is not None:
                pair["margin"] = float(r["margin"])
            pairs.append(pair)
        return _filter_pairs(pairs, len(rows))
    records = _records_of(source, "pairs", cache_dir)
    return _filter_pairs([_pair_row(row, where) for where, row in records], len(records))


def _prompt_row(row: dict, where: str) -> str:
    """The templated prompt of one row: a preference pair's shared prompt (HH-RLHF transcripts or
    {prompt, chosen, rejected}: the file the reward model trained on serves PPO too), {messages} (up to the
    last user turn), {prompt}, or an Alpaca/Dolly row's instruction."""
    if "chosen" in row and "rejected" in row:
        return _pair_row(row, where)["prompt"]
    if "messages" in row:
        messages = _check_conversation(row["messages"], where)
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")  # later answers are ignored
        return render_conversation(messages[:last_user + 1])
    if "prompt" in row:
        return chat_prompt(_str_field(row, "prompt", where))
    if "instruction" in row:
        context = _str_field(row, "input", where, "") or _str_field(row, "context", where, "")
        return chat_prompt(_with_context(_str_field(row, "instruction", where), context))
    raise DataError(f"{where}: unrecognized row; expected {{prompt}}, {{messages}} or {{instruction}}")


def load_prompts(source: str, cache_dir=DEFAULT_CACHE_DIR) -> tuple[list[dict], dict]:
    """Prompts for RL and evaluation: ([{"prompt"[, "kind"]}], stats), prompts templated.

    source: "world" (the PPO prompts; each also carries its "kind"), "world-eval" (the held-out
    evaluation prompts), "hh-rlhf" (the prompts of its pairs), "alpaca"/"dolly" (their instructions),
    or a PATH with {prompt} rows (raw instructions), {messages} rows, Alpaca/Dolly rows, or preference pairs
    (HH-RLHF transcripts, {prompt, chosen, rejected}).
    Empty instructions are dropped (stats["dropped_empty"]), repeats too (stats["dropped_duplicate"]).
    A source with no usable prompt left is a DataError (before any model is loaded, in every script).
    """
    if source in ("world", "world-eval"):
        world = _world()
        rows = world.rl_prompts if source == "world" else world.eval_prompts
        items = [{"prompt": chat_prompt(r["prompt"]), "kind": r["kind"]} for r in rows]
        return items, {"read": len(rows), "prompts": len(items), "dropped_empty": 0, "dropped_duplicate": 0}
    if source in DATASETS and DATASETS[source]["kind"] == "pairs":
        pairs, pair_stats = load_pairs(source, cache_dir)
        prompts, n_read, n_empty = [p["prompt"] for p in pairs], pair_stats["read"], 0
    else:
        records = _records_of(source, "prompts", cache_dir)
        prompts = [_prompt_row(row, where) for where, row in records]
        empty = "".join(chat_prompt("").split())  # the template around nothing (or only whitespace)
        kept = [p for p in prompts if "".join(p.split()) != empty]
        n_read, n_empty, prompts = len(records), len(prompts) - len(kept), kept
    unique = list(dict.fromkeys(prompts))  # keeps the first occurrence, in order
    stats = {"read": n_read, "prompts": len(unique), "dropped_empty": n_empty,
             "dropped_duplicate": len(prompts) - len(unique)}
    if not unique:
        raise DataError(f"no usable prompts in {source} ({n_read} rows read, {n_empty} with an empty instruction)")
    return [{"prompt": p} for p in unique], stats


def split_holdout(items: list, frac: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """Deterministically hold out a fraction of the items: (train, heldout), each in the original order.

    At least one item is held out (and one kept) when there are two or more items and frac > 0.
    """
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"frac must be in [0, 1), got {frac}")
    n = len(items)
    n_held = 0 if frac == 0 or n < 2 else min(n - 1, max(1, round(frac * n)))
    held = set(random.Random(seed).sample(range(n), n_held))
    return ([x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held])


def unique_prompts(encoded: list) -> list[list[int]]:
    """The distinct prompts (token ids, in first-seen order) of encoded examples (ids, n_prompt) or EncodedPairs:
    the fixed held-out prompts that real-data runs answer side by side, or the prompts RM normalization samples."""
    keys = (tuple(e.chosen[: e.n_prompt]) if isinstance(e, EncodedPair) else tuple(e[0][: e[1]]) for e in encoded)
    return [list(k) for k in dict.fromkeys(keys)]


def fixed_subset(items: list, n: int) -> list:
    """At most n items spread evenly over the list (every k-th), the same ones on every call: a held-out
    evaluation that costs the same however large the held-out split is, and compares like with like
    from one evaluation to the next. n <= 0 means all items."""
    if n <= 0 or len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


# -----------------------------------------------------------------------------
# 3. Tokens and batches

def _prompt_budget(block_size: int, max_prompt_tokens: int | None) -> int:
    """The most prompt tokens kept. Default: half the context, so a long prompt (a long Dolly context,
    a long HH dialogue) can never crowd out the response the model is trained on. It must leave at
    least one position for the response."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (one prompt and one response token), got {block_size}")
    budget = block_size // 2 if max_prompt_tokens is None else max_prompt_tokens
    if not 1 <= budget <= block_size - 1:
        raise ValueError(f"max_prompt_tokens must be in [1, block_size - 1 = {block_size - 1}], got {budget}")
    return budget


def encode_prompt(tok, prompt: str, max_prompt_tokens: int) -> tuple[list[int], bool]:
    """Prompt ids, LEFT-truncated to max_prompt_tokens: (ids, truncated).

    Left, because a prompt's end holds what matters most: the last instruction and the template's
    "### Response:\\n", right where the answer begins. The cut may start mid-word; that is harmless.
    """
    ids = tok.encode(prompt)
    if len(ids) > max_prompt_tokens:
        return ids[-max_prompt_tokens:], True
    return ids, False


def encode_prompts(tok, prompts: list[str], max_prompt_tokens: int) -> tuple[list[list[int]], dict]:
    """Prompts for generation (RL rollouts, samples): ([ids], stats), each LEFT-truncated to
    max_prompt_tokens like every other stage's prompts. stats counts "prompts" and "prompt_truncated".

    The caller picks the budget so that prompt + the longest response fits the context
    (block_size - max_new_tokens): a longer prompt would leave a sampled batch no room to answer.
    """
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be at least 1, got {max_prompt_tokens}")
    out, n_truncated = [], 0
    for p in prompts:
        ids, truncated = encode_prompt(tok, p, max_prompt_tokens)
        out.append(ids)
        n_truncated += truncated
    return out, {"prompts": len(out), "prompt_truncated": n_truncated}


def encode_example(tok, prompt: str, response: str, block_size: int,
                   max_prompt_tokens: int | None = None) -> tuple[list[int], int] | None:
    """The one joining rule: (ids, n_prompt) with ids = encode(prompt) + encode(response) + [EOS].

    Truncation: the prompt keeps at most max_prompt_tokens tokens (default block_size // 2; its END is
    kept), then the response is RIGHT-truncated so that len(ids) <= block_size. A right-truncated
    response loses its EOS: the model learns the beginning of a long answer, not where it stops.
    Returns None when there is no response token to train on (an empty response), so no example with
    an all-zero loss mask ever reaches a batch (it would divide by zero: a NaN loss).
    Use encode_examples to also count what was truncated.
    """
    ids, _, _ = _encode(tok, prompt, response, block_size, _prompt_budget(block_size, max_prompt_tokens))
    return ids


def _encode(tok, prompt, response, block_size, budget):
    """encode_example's work: ((ids, n_prompt) or None, prompt_truncated, response_truncated)."""
    prompt_ids, prompt_truncated = encode_prompt(tok, prompt, budget)
    response_ids = tok.encode(response)
    if not response_ids:
        return None, prompt_truncated, False
    response_ids = response_ids + [tok.eos_id]  # the real EOS: a training target, never padding
    room = block_size - len(prompt_ids)  # >= 1, guaranteed by the prompt budget
    response_truncated = len(response_ids) > room
    ids = prompt_ids + response_ids[:room]
    return (ids, len(prompt_ids)), prompt_truncated, response_truncated


def encode_examples(tok, examples: list[dict], block_size: int,
                    max_prompt_tokens: int | None = None) -> tuple[list[tuple[list[int], int]], dict]:
    """encode_example over [{"prompt", "response"}]: ([(ids, n_prompt)], stats) with stats counting
    prompt_truncated, response_truncated and dropped_empty (examples with no response token)."""
    budget = _prompt_budget(block_size, max_prompt_tokens)
    out, stats = [], {"examples": 0, "prompt_truncated": 0, "response_truncated": 0, "dropped_empty": 0}
    for ex in examples:
        enc, p_trunc, r_trunc = _encode(tok, ex["prompt"], ex["response"], block_size, budget)
        stats["prompt_truncated"] += p_trunc
        if enc is None:
            stats["dropped_empty"] += 1
            continue
        stats["response_truncated"] += r_trunc
        out.append(enc)
    stats["examples"] = len(out)
    return out, stats


class EncodedPair(NamedTuple):
    """One tokenized preference pair. Both sequences are prompt + answer + EOS and share the first n_prompt tokens."""
    chosen: list[int]
    rejected: list[int]
    n_prompt: int
    margin: float  # how much better chosen is, when the data says (0.0 otherwise)


def encode_pairs(tok, pairs: list[dict], block_size: int, max_prompt_tokens: int | None = None
                 ) -> tuple[list[EncodedPair], dict]:
    """Preference pairs -> ([EncodedPair(chosen, rejected, n_prompt, margin)], stats).

    Both answers share the same (identically truncated) prompt. margin is 0.0 when the pair has none.
    A pair whose two sequences are identical after truncation (the answers differed only beyond the
    context) is dropped: it carries no preference. stats counts prompt_truncated,
    response_truncated (pairs with either answer cut), dropped_empty, dropped_identical_after_truncation.
    """
    budget = _prompt_budget(block_size, max_prompt_tokens)
    out = []
    stats = {"pairs": 0, "prompt_truncated": 0, "response_truncated": 0, "dropped_empty": 0,
             "dropped_identical_after_truncation": 0}
    for p in pairs:
        chosen, p_trunc, c_trunc = _encode(tok, p["prompt"], p["chosen"], block_size, budget)
        rejected, _, r_trunc = _encode(tok, p["prompt"], p["rejected"], block_size, budget)
        stats["prompt_truncated"] += p_trunc
        if chosen is None or rejected is None:
            stats["dropped_empty"] += 1
            continue
        stats["response_truncated"] += c_trunc or r_trunc
        if chosen[0] == rejected[0]:
            stats["dropped_identical_after_truncation"] += 1
            continue
        out.append(EncodedPair(chosen[0], rejected[0], chosen[1], float(p.get("margin", 0.0))))
    stats["pairs"] = len(out)
    return out, stats


def length_groups(lengths: list[int], rows: int) -> list[list[int]]:
    """Indices 0..N-1 in groups of at most `rows`, shortest sequences first. A padded batch costs its longest
    sequence times its rows, and these lengths vary 10x (a 6-token answer, a 120-token poem): collated by
    groups of similar length, a batch carries little padding. Every index is in exactly one group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + rows] for i in range(0, len(order), rows)]


def collate(seqs: list[tuple[list[int], int]], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch of (ids, n_prompt) to its longest sequence L and build the masks, all (B, L) long:

      input_ids       the tokens, padded with pad_id
      attention_mask  1 on real tokens, 0 on padding
      response_mask   1 on response tokens INCLUDING the final EOS, 0 on prompt and padding

    side="right" pads after the tokens (training); side="left" pads before them (batched generation
    and scoring, so every row's last real token is in the last column).
    Masks come from the lengths, never from comparing ids with pad_id (pad_id == EOS id in GPT-2).

    How every stage uses it: the target of position t is input_ids[:, t + 1], so SFT trains on
    targets input_ids[:, 1:] where response_mask[:, 1:] == 1, and a sequence's log-probability sums
    log p(input_ids[:, 1:]) over the same positions.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not seqs:
        raise ValueError("collate needs at least one sequence")
    for ids, n_prompt in seqs:
        if not ids or not 0 <= n_prompt <= len(ids):
            raise ValueError(f"bad sequence: {len(ids)} tokens with n_prompt {n_prompt}")
    B, L = len(seqs), max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    response_mask = torch.zeros((B, L), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(seqs):
        # EXERCISE response_mask: fill row i: the ids, attention_mask on real tokens, response_mask on response + EOS
        start = 0 if side == "right" else L - len(ids)  # the column of the first real token
        end = start + len(ids)
        input_ids[i, start:end] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, start:end] = 1
        response_mask[i, start + n_prompt:end] = 1
        # END EXERCISE response_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def per_sequence(fn, seqs: list[tuple[list[int], int]], pad_id: int, device, rows: int = 32) -> torch.Tensor:
    """fn(batch) -> (B,) one number per sequence (a log-prob sum, a reward), computed on length-sorted groups
    of at most `rows` sequences (length_groups: little padding) and returned as (N,) in the order of
    `seqs`. Gradients flow through as if it were one batch."""
    groups = length_groups([len(ids) for ids, _ in seqs], rows)
    out = torch.cat([fn({k: v.to(device) for k, v in collate([seqs[i] for i in g], pad_id).items()}) for g in groups])
    order = torch.tensor([i for g in groups for i in g], device=out.device)
    return out[torch.argsort(order)]  # out[j] belongs to seqs[order[j]]


def per_pair(fn, pairs: list[EncodedPair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn of every chosen sequence (B,), fn of every rejected sequence (B,)): the 2B sequences go through
    per_sequence together (fewer, fuller batches), chosen first."""
    seqs = [(p.chosen, p.n_prompt) for p in pairs] + [(p.rejected, p.n_prompt) for p in pairs]
    out = per_sequence(fn, seqs, pad_id, device)  # (2B,)
    return out[: len(pairs)], out[len(pairs) :]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The column of each row's last real token, from the mask alone: (B,) long.

    Right padding: lengths - 1. Left padding: L - 1 for every row. This is where a reward model
    reads its score (the final EOS), never `(ids == eos).argmax()`, which finds padding or nothing.
    """
    B, L = attention_mask.shape
    if not bool((attention_mask.sum(dim=1) > 0).all()):
        raise ValueError("a row of attention_mask has no real token")
    positions = torch.arange(L, device=attention_mask.device).expand(B, L)  # (B, L)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values  # (B,)


def load_pair_splits(source: str, holdout: float, cache_dir=DEFAULT_CACHE_DIR) -> tuple[list[dict], list[dict], dict]:
    """(train pairs, held-out pairs, stats): the toy world has its own noise-free held-out pairs; any other
    source holds out a deterministic `holdout` fraction."""
    pairs, stats = load_pairs(source, cache_dir)
    if source == "world":
        val_pairs, _ = load_pairs("world-heldout", cache_dir)
    else:
        pairs, val_pairs = split_holdout(pairs, holdout, seed=0)
    return pairs, val_pairs, stats
