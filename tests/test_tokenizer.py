"""The offline GPT-2 tokenizer: GPT-2's published ids, the special-token rule, truncated vocabularies."""

import pytest

from minipost.tokenizer import GPT2_VOCAB_SIZE, Tokenizer, chat_prompt


@pytest.fixture(scope="module")
def full():
    return Tokenizer()


def test_gpt2_reference_ids(full):
    assert full.eos_id == 50256 and full.vocab_size == GPT2_VOCAB_SIZE
    assert full.encode("The dog") == [464, 3290]
    # a literal "<|endoftext|>" typed by a user is ordinary text, never the special token
    assert full.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]


def test_round_trip_and_eos_dropped_on_decode(full):
    text = "Hello, world!  Ünïcödé ✓ and <|endoftext|> inside.\r\n"
    ids = full.encode(text)
    assert full.eos_id not in ids
    assert full.decode(ids) == text
    assert full.decode(ids + [full.eos_id]) == text


def test_truncated_vocabulary_keeps_gpt2_ids(full):
    small = Tokenizer(4096)
    assert small.eos_id == 4095
    text = "The capital of France is Paris. Ouagadougou, 1234567!"
    ids = small.encode(text)
    assert max(ids) < 4095 and small.decode(ids) == text
    # every id of the small BPE is a GPT-2 token with the same bytes
    for i in ids:
        assert small.enc.decode_single_token_bytes(i) == full.enc.decode_single_token_bytes(i)
    # frequent words keep their single GPT-2 id; rare ones fall apart into smaller GPT-2 tokens
    assert small.encode("The dog") == [464, 3290]
    assert len(small.encode(" Ouagadougou")) > len(full.encode(" Ouagadougou"))


def test_chat_template_and_joining_rule(full):
    p = chat_prompt("What is the capital of France?")
    assert p == "### Instruction:\nWhat is the capital of France?\n\n### Response:\n"
    prompt_ids, response_ids = full.encode_example(p, "Paris")
    assert response_ids[-1] == full.eos_id
    # the template ends with a newline: joint tokenization gives the same tokens as separate
    assert prompt_ids + response_ids[:-1] == full.encode(p + "Paris")


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer(100)
