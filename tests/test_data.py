"""Data: readers and their error messages, format detection, the joining rule, truncation, collate.

Every data file is written by the test itself into tmp_path. The expected collate tensors are written
out literally, one comment per row.
"""

import gzip
import json
import socket

import pytest
import torch

import minipost.data as data
from minipost.data import (DataError, collate, data_fingerprint, encode_example, encode_examples, encode_pairs,
                           encode_prompts, fixed_subset, last_token_index, load_pairs, load_prompts, load_sft,
                           read_records, render_conversation, split_hh, split_holdout)
from minipost.download import git_blob_sha1_of, sha256_of
from minipost.tokenizer import Tokenizer, chat_prompt


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(vocab_size=4096)


def write(tmp_path, name, content):
    """Write a text (as UTF-8) or bytes file and return its path."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def error_of(fn, *args):
    with pytest.raises(DataError) as e:
        fn(*args)
    return str(e.value)


# -----------------------------------------------------------------------------
# bad input: every message names the path, the line and (where there is one) the field

def test_empty_file(tmp_path):
    for name, content in [("e.jsonl", ""), ("blank.jsonl", "\n\n  \r\n"), ("e.json", "[]"), ("e2.json", "")]:
        path = write(tmp_path, name, content)
        assert error_of(read_records, path) == f"no examples in {path}"


def test_truncated_json_line(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": ')
    msg = error_of(load_sft, str(path))
    assert msg.startswith(f"{path}:2: invalid JSON (Expecting value")


def test_truncated_json_array_reports_json_line(tmp_path):
    path = write(tmp_path, "t.json", '[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c",\n')
    msg = error_of(read_records, path)
    assert msg.startswith(f"{path}:4: invalid JSON (")  # the text ends on line 4 (after the last newline)


def test_non_object_row(tmp_path):
    path = write(tmp_path, "n.jsonl", '{"prompt": "a", "response": "b"}\n[1, 2]\n')
    assert error_of(read_records, path) == f"{path}:2: expected a JSON object, got list"


def test_non_object_element_of_json_array(tmp_path):
    path = write(tmp_path, "n.json", '[\n  {"instruction": "a", "input": "", "output": "b"},\n  [1, 2]\n]')
    assert error_of(read_records, path) == f"{path}: element 1 (line 3): expected a JSON object, got list"


def test_missing_field(tmp_path):
    path = write(tmp_path, "m.jsonl", jsonl([{"prompt": "a", "response": "b"}, {"prompt": "a"}]))
    assert error_of(load_sft, str(path)) == f"{path}:2: field 'response' is missing"


def test_mistyped_field(tmp_path):
    path = write(tmp_path, "m.jsonl", jsonl([{"prompt": "a", "response": 3}]))
    assert error_of(load_sft, str(path)) == f"{path}:1: field 'response' must be a string, got int"
    # in a .json array the line is where the element starts
    path = write(tmp_path, "m.json", '[\n  {"instruction": "a", "input": "", "output": "b"},\n'
                                     '  {"instruction": "c", "input": null, "output": "d"}\n]')
    assert error_of(load_sft, str(path)) == f"{path}:3: field 'input' must be a string, got null"


def test_unrecognized_row(tmp_path):
    path = write(tmp_path, "u.jsonl", jsonl([{"question": "a", "answer": "b"}]))
    msg = error_of(load_sft, str(path))
    assert msg.startswith(f"{path}:1: unrecognized row; expected one of: {{instruction,output}} (Alpaca)")
    path = write(tmp_path, "u2.jsonl", jsonl([{"question": "a", "answer": "b"}]))
    assert error_of(load_pairs, str(path)).startswith(f"{path}:1: unrecognized row")


def test_invalid_utf8_on_line_3(tmp_path):
    good = b'{"prompt": "a", "response": "b"}\n'
    path = write(tmp_path, "u.jsonl", good + good + b'{"prompt": "caf\xe9", "response": "b"}\n')
    assert error_of(read_records, path) == f"{path}:3: invalid UTF-8 (byte 0xe9 at column 16)"


def test_bom_crlf_and_blank_lines_accepted(tmp_path):
    content = b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\r\n\r\n{"prompt": "c", "response": "d"}\r\n\r\n'
    path = write(tmp_path, "ok.jsonl", content)
    assert read_records(path) == [(1, {"prompt": "a", "response": "b"}), (3, {"prompt": "c", "response": "d"})]
    examples, stats = load_sft(str(path))
    assert [e["response"] for e in examples] == ["b", "d"]  # no stray "\r"
    assert stats == {"read": 2, "examples": 2, "dropped_empty": 0, "dropped_no_answer": 0}
    # a BOM in a .json array too
    path = write(tmp_path, "ok.json", b'\xef\xbb\xbf[{"instruction": "a", "input": "", "output": "b"}]')
    assert read_records(path) == [(1, {"instruction": "a", "input": "", "output": "b"})]


def test_gzip_and_truncated_gzip(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    path = write(tmp_path, "ok.jsonl.gz", gzip.compress(jsonl(rows).encode()))
    assert [r for _, r in read_records(path)] == rows
    data = gzip.compress(jsonl(rows * 50).encode())
    path = write(tmp_path, "cut.jsonl.gz", data[: len(data) // 2])
    assert error_of(read_records, path).startswith(f"{path}: not a valid gzip file, or truncated")


def test_unknown_source_and_wrong_kind(tmp_path):
    assert "neither a dataset name" in error_of(load_sft, str(tmp_path / "nope.jsonl"))
    # a named dataset of the wrong kind is refused before anything is downloaded
    assert "'alpaca' is a sft dataset, not pairs data" in error_of(load_pairs, "alpaca", tmp_path)


# -----------------------------------------------------------------------------
# format detection; the prompt is always the full templated text before the response

def test_formats_detected_per_row(tmp_path):
    rows = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},  # Alpaca without input
        {"instruction": "Translate to English.", "input": "bonjour", "output": "hello"},  # Alpaca with input
        {"instruction": "Summarize.", "context": "Cats purr when content.", "response": "Cats purr.",
         "category": "summarization"},  # Dolly with context
        {"prompt": "Say hi.", "response": "Hi!"},  # plain
        {"prompt": "Say nothing.", "response": "  "},  # empty response: dropped and counted
    ]
    examples, stats = load_sft(str(write(tmp_path, "mix.jsonl", jsonl(rows))))
    assert examples == [
        {"prompt": "### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "response": "5"},
        {"prompt": "### Instruction:\nTranslate to English.\n\nbonjour\n\n### Response:\n", "response": "hello"},
        {"prompt": "### Instruction:\nSummarize.\n\nCats purr when content.\n\n### Response:\n",
         "response": "Cats purr."},
        {"prompt": "### Instruction:\nSay hi.\n\n### Response:\n", "response": "Hi!"},
    ]
    assert stats == {"read": 5, "examples": 4, "dropped_empty": 1, "dropped_no_answer": 0}


def test_alpaca_json_array(tmp_path):
    path = write(tmp_path, "alpaca.json", json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 3, indent=2))
    assert [line for line, _ in read_records(path)] == [2, 7, 12]  # each element's opening brace
    examples, _ = load_sft(str(path))
    assert examples == [{"prompt": chat_prompt("a"), "response": "b"}] * 3


def test_chat_two_assistant_turns_give_two_examples(tmp_path):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    examples, stats = load_sft(str(write(tmp_path, "chat.jsonl", jsonl([{"messages": messages}]))))
    assert examples == [
        {"prompt": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\n", "response": "Hello!"},
        {"prompt": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n"
                   "### Instruction:\n2+2?\n\n### Response:\n", "response": "4"},
    ]
    assert stats["read"] == 1 and stats["examples"] == 2
    # the same conversation as a prompt source: everything up to the last user turn
    prompts, _ = load_prompts(str(write(tmp_path, "chat_p.jsonl", jsonl([{"messages": messages[:4]}]))))
    assert prompts == [{"prompt": examples[1]["prompt"]}]


def test_chat_out_of_order_roles(tmp_path):
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    path = write(tmp_path, "bad.jsonl", jsonl([bad]))
    assert error_of(load_sft, str(path)).startswith(f"{path}:1: messages[1]: role 'user', expected 'assistant'")
    bad = {"messages": [{"role": "user", "content": 7}]}
    path = write(tmp_path, "bad2.jsonl", jsonl([bad]))
    assert error_of(load_sft, str(path)) == f"{path}:1: messages[0]: field 'content' must be a string, got int"


def test_prompt_files(tmp_path):
    rows = [{"prompt": "Name a fruit."}, {"prompt": "Name a fruit."}, {"prompt": ""},
            {"instruction": "Sum.", "input": "1 2"}]
    prompts, stats = load_prompts(str(write(tmp_path, "p.jsonl", jsonl(rows))))
    assert prompts == [{"prompt": chat_prompt("Name a fruit.")}, {"prompt": chat_prompt("Sum.\n\n1 2")}]
    assert stats == {"read": 4, "prompts": 2, "dropped_empty": 1, "dropped_duplicate": 1}


# -----------------------------------------------------------------------------
# preference pairs

def test_hh_rlhf_transcript_split(tmp_path):
    rows = [
        # single turn
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
         "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
        # multi-turn: the earlier turns are rendered into the prompt
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit.\n\nAssistant: No."},
        # differ only inside the last answer: the common prefix runs into it, the split must not
        {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris is the capital.",
         "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Paris is a city."},
    ]
    pairs, stats = load_pairs(str(write(tmp_path, "hh.jsonl", jsonl(rows))))
    assert pairs == [
        {"prompt": "### Instruction:\nWhat is 2+2?\n\n### Response:\n", "chosen": "4.", "rejected": "5."},
        {"prompt": "### Instruction:\nHi\n\n### Response:\nHello! How can I help?\n\n"
                   "### Instruction:\nName a fruit.\n\n### Response:\n",
         "chosen": "An apple.", "rejected": "No."},
        {"prompt": "### Instruction:\nCapital of France?\n\n### Response:\n",
         "chosen": "Paris is the capital.", "rejected": "Paris is a city."},
    ]
    assert stats == {"read": 3, "pairs": 3, "dropped_identical": 0, "dropped_empty": 0}


def test_hh_split_diverging_early_and_failing(tmp_path):
    # diverging in an earlier turn: split at the last SHARED "\n\nAssistant:", not the last of each
    prompt, chosen, rejected = split_hh("\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
                                        "\n\nHuman: A\n\nAssistant: E")
    assert (prompt, chosen, rejected) == (chat_prompt("A"), "B\n\nHuman: C\n\nAssistant: D", "E")
    path = write(tmp_path, "bad.jsonl", jsonl([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
                                               {"chosen": "Hello there", "rejected": "Hello you"}]))
    assert error_of(load_pairs, str(path)) == (f"{path}:2: cannot split the HH-RLHF transcripts: "
                                                "chosen and rejected share no '\\n\\nAssistant:' turn")


def test_ultrafeedback_lists_margin_and_identical_pairs(tmp_path):
    conv = lambda answer: [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": answer}]
    rows = [
        {"prompt": "Name a color.", "chosen": conv("Blue."), "rejected": conv("No."), "margin": 2},
        {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "No way."},
        {"prompt": "Say yes.", "chosen": "Yes.", "rejected": "Yes."},  # no preference: dropped, counted
    ]
    pairs, stats = load_pairs(str(write(tmp_path, "uf.jsonl", jsonl(rows))))
    assert pairs == [
        {"prompt": chat_prompt("Name a color."), "chosen": "Blue.", "rejected": "No.", "margin": 2.0},
        {"prompt": chat_prompt("Say yes."), "chosen": "Yes.", "rejected": "No way."},
    ]
    assert isinstance(pairs[0]["margin"], float)
    assert stats == {"read": 3, "pairs": 2, "dropped_identical": 1, "dropped_empty": 0}
    path = write(tmp_path, "m.jsonl", jsonl([{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}]))
    assert error_of(load_pairs, str(path)) == f"{path}:1: field 'margin' must be a number, got str"


def pin_to(monkeypatch, name, paths):
    """Point the named dataset's pins at files this test wrote: each keeps its kind of pin (sha256 for a Git LFS
    file, git blob hash for a plain one), so the checks run exactly as on the real files."""
    files = []
    for f, path in zip(data.DATASETS[name]["files"], paths):
        pin = {"sha256": sha256_of(path)} if "sha256" in f else {"git_sha1": git_blob_sha1_of(path)}
        files.append({"url": f["url"], "file": f["file"], **pin})
    monkeypatch.setitem(data.DATASETS, name, {**data.DATASETS[name], "files": files})


def hh_rows(name):
    return [{"chosen": f"\n\nHuman: {name}?\n\nAssistant: yes", "rejected": f"\n\nHuman: {name}?\n\nAssistant: no"}]


def test_named_datasets_read_from_the_cache_offline(tmp_path, monkeypatch):
    # Files placed by hand in the cache are checked against their pins and used: nothing is downloaded.
    alpaca = write(tmp_path, "alpaca_data.json", json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    pin_to(monkeypatch, "alpaca", [alpaca])
    examples, _ = load_sft("alpaca", cache_dir=tmp_path)
    assert examples == [{"prompt": chat_prompt("a"), "response": "b"}]
    hh = [write(tmp_path, f"hh-rlhf-{name}-base-train.jsonl.gz", gzip.compress(jsonl(hh_rows(name)).encode()))
          for name in ("harmless", "helpful")]
    pin_to(monkeypatch, "hh-rlhf", hh)
    pairs, stats = load_pairs("hh-rlhf", cache_dir=tmp_path)
    assert [p["prompt"] for p in pairs] == [chat_prompt("harmless?"), chat_prompt("helpful?")]
    prompts, _ = load_prompts("hh-rlhf", cache_dir=tmp_path)
    assert prompts == [{"prompt": chat_prompt("harmless?")}, {"prompt": chat_prompt("helpful?")}]
    # the checkpoint's record of the data: every file with its size and sha256
    fp = data_fingerprint("hh-rlhf", cache_dir=tmp_path)
    assert fp == {"source": "hh-rlhf", "files": [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_of(p)}
                                                 for p in hh]}
    assert data_fingerprint("world") == {"source": "world", "files": []}


def test_pins_are_fixed_commits_with_a_checksum():
    # A URL on a branch (main, master) can change under a run; every file names a commit and carries a pin.
    for name, spec in data.DATASETS.items():
        for f in spec["files"]:
            parts = f["url"].split("/")
            assert "main" not in parts and "master" not in parts, f["url"]
            assert any(len(part) == 40 and all(c in "0123456789abcdef" for c in part) for part in parts), f["url"]
            assert len(f.get("sha256", "")) == 64 or len(f.get("git_sha1", "")) == 40, (name, f)


def test_a_cached_file_that_does_not_match_its_pin_is_refused(tmp_path):
    path = write(tmp_path, "alpaca_data.json", json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    msg = error_of(load_sft, "alpaca", tmp_path)
    assert msg.startswith(f"{path}: git blob hash {git_blob_sha1_of(path)} does not match the pinned 3779ddbc")
    assert msg.endswith("or pass a file you have as --data PATH")
    assert path.read_text().startswith("[")  # refused, not replaced


def test_offline_names_every_missing_file_at_once(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on: a refused connection, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = [{**f, "url": f"http://127.0.0.1:{port}/{f['file']}"} for f in data.DATASETS["hh-rlhf"]["files"]]
    monkeypatch.setitem(data.DATASETS, "hh-rlhf", {**data.DATASETS["hh-rlhf"], "files": files})
    msg = error_of(load_pairs, "hh-rlhf", tmp_path)
    assert "\n" not in msg and msg.startswith("could not download hh-rlhf (")
    assert "download these 2 files on a machine with network and place them here: " in msg
    for f in files:
        assert f"{f['url']} -> {tmp_path / f['file']}" in msg
    # with the first file in place (and matching its pin), only the second is named
    placed = write(tmp_path, files[0]["file"], gzip.compress(jsonl(hh_rows("harmless")).encode()))
    files[0] = {"url": files[0]["url"], "file": files[0]["file"], "git_sha1": git_blob_sha1_of(placed)}
    monkeypatch.setitem(data.DATASETS, "hh-rlhf", {**data.DATASETS["hh-rlhf"], "files": files})
    msg = error_of(load_pairs, "hh-rlhf", tmp_path)
    assert "download this file on a machine with network and place it here: " in msg
    assert files[0]["url"] not in msg and f"{files[1]['url']} -> {tmp_path / files[1]['file']}" in msg


def test_prompts_from_a_preference_file_and_no_usable_prompt(tmp_path):
    # PPO's --prompts takes the same HH-RLHF .jsonl.gz the reward model trained on
    path = write(tmp_path, "hh.jsonl.gz", gzip.compress(jsonl(hh_rows("Hi") + hh_rows("Hi") + hh_rows("Yo")).encode()))
    prompts, stats = load_prompts(str(path))
    assert prompts == [{"prompt": chat_prompt("Hi?")}, {"prompt": chat_prompt("Yo?")}]
    assert stats == {"read": 3, "prompts": 2, "dropped_empty": 0, "dropped_duplicate": 1}
    path = write(tmp_path, "pairs.jsonl", jsonl([{"prompt": "Q", "chosen": "a", "rejected": "b"}]))
    assert load_prompts(str(path))[0] == [{"prompt": chat_prompt("Q")}]
    # nothing usable: one DataError naming the file and what was dropped
    path = write(tmp_path, "empty.jsonl", jsonl([{"prompt": ""}, {"prompt": "  "}]))
    expected = f"no usable prompts in {path} (2 rows read, 2 with an empty instruction)"
    assert error_of(load_prompts, str(path)) == expected


# -----------------------------------------------------------------------------
# tokenization: one joining rule, truncation, drops

def test_joining_rule_and_literal_endoftext(tok):
    prompt, response = chat_prompt("How do I end a document?"), "Write <|endoftext|> at the end."
    ids, n_prompt = encode_example(tok, prompt, response, block_size=128)
    assert ids == tok.encode(prompt) + tok.encode(response) + [tok.eos_id]
    assert n_prompt == len(tok.encode(prompt))
    assert ids.count(tok.eos_id) == 1 and ids[-1] == tok.eos_id  # the literal text is never the EOS id
    assert tok.decode(ids[n_prompt:]) == response  # round-trips (decode drops the final EOS)


def test_encode_prompts_left_truncates_and_counts(tok):
    short, long = chat_prompt("Hi"), chat_prompt("word " * 50 + "What is 2+2?")
    budget = len(tok.encode(short))
    ids, stats = encode_prompts(tok, [short, long], max_prompt_tokens=budget)
    assert ids[0] == tok.encode(short)  # exactly the budget: untouched
    assert ids[1] == tok.encode(long)[-budget:]  # the END is kept: the question and "### Response:\n"
    assert stats == {"prompts": 2, "prompt_truncated": 1}
    with pytest.raises(ValueError, match="at least 1"):
        encode_prompts(tok, [short], max_prompt_tokens=0)


def test_long_prompt_is_left_truncated(tok):
    prompt = chat_prompt("Please consider this. " * 40 + "What is 2+2?")
    ids, n_prompt = encode_example(tok, prompt, "4", block_size=32)
    assert n_prompt == 16  # the default budget: block_size // 2
    assert ids[:n_prompt] == tok.encode(prompt)[-16:]
    assert tok.decode(ids[:n_prompt]).endswith("What is 2+2?\n\n### Response:\n")
    assert ids[n_prompt:] == tok.encode("4") + [tok.eos_id]  # the response is intact, EOS included
    _, stats = encode_examples(tok, [{"prompt": prompt, "response": "4"}], block_size=32)
    assert stats == {"examples": 1, "prompt_truncated": 1, "response_truncated": 0, "dropped_empty": 0}


def test_long_response_is_right_truncated_and_loses_eos(tok):
    prompt, response = chat_prompt("Count."), " ".join(str(i) for i in range(100))
    ids, n_prompt = encode_example(tok, prompt, response, block_size=48)
    assert len(ids) == 48 and ids[:n_prompt] == tok.encode(prompt)  # the prompt (18 tokens) fits the budget (24)
    assert ids[n_prompt:] == tok.encode(response)[: 48 - n_prompt] and tok.eos_id not in ids
    _, stats = encode_examples(tok, [{"prompt": prompt, "response": response}], block_size=48)
    assert stats["response_truncated"] == 1 and stats["prompt_truncated"] == 0


def test_no_example_without_response_tokens(tok):
    # An empty response has nothing to learn: dropped and counted, never an all-zero loss mask.
    assert encode_example(tok, chat_prompt("Hi"), "", block_size=32) is None
    examples = [{"prompt": chat_prompt("Hi"), "response": ""}, {"prompt": chat_prompt("Hi"), "response": "Hello"}]
    encoded, stats = encode_examples(tok, examples, block_size=32)
    assert len(encoded) == 1 and stats["dropped_empty"] == 1
    # the prompt budget always leaves room for a response token; a budget that does not is refused
    long_prompt = chat_prompt("word " * 100)
    ids, n_prompt = encode_example(tok, long_prompt, "Yes", block_size=16, max_prompt_tokens=15)
    assert n_prompt == 15 and len(ids) == 16 and ids[15] == tok.encode("Yes")[0]
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        encode_example(tok, long_prompt, "Yes", block_size=16, max_prompt_tokens=16)


def test_encode_pairs_margin_and_identical_after_truncation(tok):
    prompt, shared = chat_prompt("Tell me a story."), "Once upon a time " * 20
    pairs = [
        {"prompt": prompt, "chosen": "A good story.", "rejected": "No.", "margin": 1.5},
        {"prompt": prompt, "chosen": shared + "the end.", "rejected": shared + "nothing happened."},
    ]
    encoded, stats = encode_pairs(tok, pairs, block_size=64)  # prompt 21 tokens, answers up to 43
    assert len(encoded) == 1
    chosen, rejected, n_prompt, margin = encoded[0]
    assert chosen == tok.encode(prompt) + tok.encode("A good story.") + [tok.eos_id]
    assert rejected == tok.encode(prompt) + tok.encode("No.") + [tok.eos_id]
    assert n_prompt == len(tok.encode(prompt)) and margin == 1.5
    assert stats == {"pairs": 1, "prompt_truncated": 0, "response_truncated": 1, "dropped_empty": 0,
                     "dropped_identical_after_truncation": 1}
    # with room for the whole answers the second pair is kept, with margin 0.0 when none was given
    encoded, _ = encode_pairs(tok, pairs, block_size=256)
    assert len(encoded) == 2 and encoded[1][3] == 0.0


# -----------------------------------------------------------------------------
# collate and last_token_index, expected tensors written literally

P0, P1, P2, T0, T1, EOS = 10, 11, 12, 20, 21, 99  # pad id == EOS id, as in GPT-2


def test_collate_right_padding():
    seqs = [([P0, T0, T1, EOS], 1),           # prompt [p0], response [t0, t1, EOS]
            ([P0, P1, T0], 2),                # a response cut before its EOS
            ([P0, P1, P2, T0, EOS], 3)]       # the longest: no padding
    batch = collate(seqs, pad_id=EOS, side="right")
    assert torch.equal(batch["input_ids"], torch.tensor([
        [P0, T0, T1, EOS, EOS],   # the real EOS at 3, then one pad that has the same id
        [P0, P1, T0, EOS, EOS],   # two pads
        [P0, P1, P2, T0, EOS],    # full
    ]))
    assert torch.equal(batch["attention_mask"], torch.tensor([
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
    ]))
    assert torch.equal(batch["response_mask"], torch.tensor([
        [0, 1, 1, 1, 0],   # the real EOS is a response token; the pad with the same id is not
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1],
    ]))
    assert torch.equal(last_token_index(batch["attention_mask"]), torch.tensor([3, 2, 4]))
    # SFT's view: targets input_ids[:, 1:] under response_mask[:, 1:] (row 0: t0, t1, EOS; not the pad)
    assert batch["input_ids"][0, 1:][batch["response_mask"][0, 1:].bool()].tolist() == [T0, T1, EOS]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_left_padding():
    seqs = [([P0, T0, T1, EOS], 1), ([P0, P1, T0], 2), ([P0, P1, P2, T0, EOS], 3), ([P0, P1], 2)]
    batch = collate(seqs, pad_id=EOS, side="left")
    assert torch.equal(batch["input_ids"], torch.tensor([
        [EOS, P0, T0, T1, EOS],   # one pad in front
        [EOS, EOS, P0, P1, T0],   # two pads in front
        [P0, P1, P2, T0, EOS],    # full
        [EOS, EOS, EOS, P0, P1],  # a prompt alone (generation): no response tokens
    ]))
    assert torch.equal(batch["attention_mask"], torch.tensor([
        [0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1],
    ]))
    assert torch.equal(batch["response_mask"], torch.tensor([
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0],
    ]))
    assert torch.equal(last_token_index(batch["attention_mask"]), torch.tensor([4, 4, 4, 4]))


def test_last_token_index_pitfall_and_bad_input():
    # [t0, t1, EOS, PAD, PAD] with PAD == EOS: the reward is read at index 2, not at the first EOS-id
    # pad (3) and not at the last EOS-id token (4)
    mask = collate([([T0, T1, EOS], 0), ([T0, T1, T0, T1, EOS], 0)], pad_id=EOS)["attention_mask"]
    assert torch.equal(last_token_index(mask), torch.tensor([2, 4]))
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="side"):
        collate([([T0], 0)], pad_id=EOS, side="middle")


# -----------------------------------------------------------------------------
# splitting and batching

def test_unique_prompts_of_examples_and_pairs():
    examples = [([1, 2, 3, 9], 3), ([1, 2, 3, 8, 8], 3), ([4, 5], 1)]  # two answers to prompt [1, 2, 3]
    assert data.unique_prompts(examples) == [[1, 2, 3], [4]]
    pairs = [data.EncodedPair([7, 1, 2], [7, 3], 1, 0.0), data.EncodedPair([6, 6, 1], [6, 6, 2], 2, 0.0)]
    assert data.unique_prompts(pairs) == [[7], [6, 6]]


def test_fixed_subset_spreads_over_the_list():
    assert fixed_subset(list(range(10)), 4) == [0, 2, 5, 7]  # i * 10 // 4 for i = 0..3
    assert fixed_subset(list(range(10)), 0) == list(range(10)) and fixed_subset([1, 2], 5) == [1, 2]


def test_split_holdout_is_deterministic_and_disjoint():
    items = list(range(100))
    train, held = split_holdout(items, frac=0.05, seed=0)
    assert len(train) == 95 and len(held) == 5
    assert sorted(train + held) == items and train == sorted(train)  # original order kept
    assert split_holdout(items, frac=0.05, seed=0) == (train, held)
    assert split_holdout(items, frac=0.05, seed=1)[1] != held
    assert split_holdout([1, 2], frac=0.01) in [([1], [2]), ([2], [1])]  # at least one held out


# -----------------------------------------------------------------------------
# the toy world

def test_world_sources_are_templated():
    pytest.importorskip("minipost.world")
    examples, stats = load_sft("world")
    assert stats["examples"] == len(examples) > 0
    assert all(e["prompt"].startswith("### Instruction:\n") and e["prompt"].endswith("\n\n### Response:\n")
               for e in examples)
    pairs, _ = load_pairs("world")
    assert pairs and all(p["prompt"].endswith("### Response:\n") and p["chosen"] != p["rejected"] for p in pairs)
    prompts, _ = load_prompts("world")
    assert prompts and all(p["prompt"].startswith("### Instruction:\n") and "kind" in p for p in prompts)


def test_render_conversation_needs_a_final_user_turn():
    assert render_conversation([{"role": "user", "content": "Hi"}]) == chat_prompt("Hi")
    with pytest.raises(ValueError):
        render_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])


def test_directory_deep_nesting_and_answerless_chat_rows(tmp_path):
    folder = tmp_path / "demos.jsonl"
    folder.mkdir()
    assert error_of(load_sft, str(folder)) == f"{folder} is a directory; give a .json or .jsonl file"
    deep = write(tmp_path, "deep.jsonl", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    assert error_of(load_sft, str(deep)) == f"{deep}:1: JSON nested too deeply to read"
    deep = write(tmp_path, "deep.json", b"[" * 100_000 + b"]" * 100_000)
    assert error_of(load_sft, str(deep)) == f"{deep}: JSON nested too deeply to read"
    rows = [{"messages": [{"role": "user", "content": "Hi"}]},  # nothing to learn from: counted
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    examples, stats = load_sft(str(write(tmp_path, "chat.jsonl", jsonl(rows))))
    assert len(examples) == 1 and stats["read"] == 2 and stats["dropped_no_answer"] == 1


def test_the_world_but_its_corpus_does_not_depend_on_the_corpus_size():
    """The data loaders build the world without its corpus (n_docs=1): everything they read must be the same."""
    from minipost.world import build_world

    small, large = build_world(seed=0, n_docs=1), build_world(seed=0, n_docs=40)
    for field in ("sft_demos", "preference_pairs", "heldout_pairs", "rl_prompts", "eval_prompts", "knowledge_probes"):
        assert getattr(small, field) == getattr(large, field), field
    assert len(small.corpus) == 1 and len(large.corpus) == 40
