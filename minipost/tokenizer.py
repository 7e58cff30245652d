"""
The GPT-2 tokenizer, offline, and the chat template every stage uses.

tiktoken's own `get_encoding("gpt2")` downloads its vocabulary on first use, which fails on an offline
laptop. GPT-2's byte-pair-encoding ranks ship inside this package instead (`gpt2.tiktoken`, taken from
the openai-whisper source distribution; sha256 pinned below), and we build the `tiktoken.Encoding`
ourselves with GPT-2's split pattern.

Vocabulary truncation (the tiny model's vocabulary): BPE merges are learned in rank order, and every
token of rank r is the merge of two tokens of lower rank. Keeping only the ranks below N-1 therefore
gives a complete, smaller BPE whose ids are GPT-2's own; the end-of-text token then gets id N-1.
A 4,096-token vocabulary keeps the output layer cheap on a CPU.

The chat template is the Alpaca / Dolly style:

    ### Instruction:
    {instruction}

    ### Response:
    {response}<|endoftext|>

Joining rule, used by every stage: tokenize the prompt, tokenize the response, concatenate, append EOS.
The template ends with a newline, so no BPE merge can cross the prompt/response joint and the tokens
are the same whether the response was sampled by a model or read from a dataset.
"""

import hashlib
from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

RANKS_FILE = Path(__file__).with_name("gpt2.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_VOCAB_SIZE = 50257  # 50,000 merges + 256 bytes + <|endoftext|>
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


def chat_prompt(instruction: str) -> str:
    """The prompt text a model sees for one instruction: everything up to where the answer begins."""
    return TEMPLATE.format(instruction=instruction)


@lru_cache(maxsize=1)
def _gpt2_ranks() -> dict:
    """Load (once) GPT-2's 50,000 BPE merges + 256 byte tokens: bytes -> rank (= token id)."""
    data = RANKS_FILE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise RuntimeError(f"{RANKS_FILE}: sha256 {digest} does not match the GPT-2 ranks ({RANKS_SHA256})")
    return load_tiktoken_bpe(str(RANKS_FILE))


class Tokenizer:
    """GPT-2 BPE, optionally truncated to the first `vocab_size - 1` ranks plus EOS.

    ids are GPT-2's own ids; `eos_id` is 50256 for the full vocabulary, `vocab_size - 1` otherwise.
    GPT-2 has no pad token: batches pad with `eos_id` and rely on attention masks (see data.py).
    """

    def __init__(self, vocab_size: int = GPT2_VOCAB_SIZE):
        if not 257 <= vocab_size <= GPT2_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be in [257, {GPT2_VOCAB_SIZE}], got {vocab_size}")
        self.vocab_size = vocab_size
        self.eos_id = vocab_size - 1
        ranks = _gpt2_ranks()
        if vocab_size < GPT2_VOCAB_SIZE:
            ranks = {token: rank for token, rank in ranks.items() if rank < self.eos_id}
        self.enc = tiktoken.Encoding(
            name=f"gpt2-{vocab_size}",
            pat_str=GPT2_SPLIT_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT: self.eos_id},
        )

    def encode(self, text: str) -> list[int]:
        """Text -> ids. A literal "<|endoftext|>" typed by a user is ordinary text, never the EOS id."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        """ids -> text. EOS ids are dropped (they end a response; they are not part of it)."""
        ids = [int(i) for i in ids if int(i) != self.eos_id]
        return self.enc.decode(ids)

    def encode_example(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """The one joining rule: (prompt ids, response ids + [EOS]); the sequence is their concatenation."""
        return self.encode(prompt), self.encode(response) + [self.eos_id]
