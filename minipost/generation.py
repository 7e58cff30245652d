"""
Answering prompts in batches -- the generation that every stage and the evaluation share -- and the one rule
for where randomness lives.

The rule, and why it is written down
------------------------------------
Sampling draws a token with `torch.multinomial(probs, generator=g)` where `probs` (B, V) lives: on the GPU
when the model is on the GPU. A generator made on the CPU cannot draw there -- torch raises "Expected a
'cuda' device type for generator but found 'cpu'" -- and a CPU-only test machine never sees it, because there
both sides are "cpu". So:

  1. a generator whose random numbers reach a model's tensors is made on the model's device, by
     `make_generator(device, seed)`, and nowhere else;
  2. a generator that only picks indices on the CPU (which prompts, which text windows, which minibatch
     order: torch.randint / torch.randperm of CPU index tensors) is made by `index_generator(seed)`. It stays
     on the CPU on every device, so the data order of a run is the same on a laptop and on a GPU;
  3. tensors handed to a collective (torch.distributed) are made on the process's device (distributed.py).

tests/test_device_static.py reads the source (ast) and fails on any torch.Generator made elsewhere, on an index
generator handed to sampling, and on a tensor built without `device=` that reaches a collective.

On the CPU, `make_generator("cpu", s)` is `torch.Generator(device="cpu").manual_seed(s)`: the same stream as
before the rule existed, so every CPU number is unchanged. On a GPU the samples are different numbers from
the CPU's (a different generator), drawn from the same distributions.
"""

import torch

from minipost import common
from minipost.data import collate
from minipost.tokenizer import Tokenizer, chat_prompt

MAX_NEW_TOKENS = 48  # the answer budget of every evaluation (held-out answers are short)


def make_generator(device, seed: int) -> torch.Generator:
    """A generator for sampling on `device` (the model's): the only place one is made (rule 1 above)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def index_generator(seed: int) -> torch.Generator:
    """A CPU generator for index sampling only (randint / randperm of which examples, in which order): never
    handed to sampling (rule 2 above)."""
    return torch.Generator(device="cpu").manual_seed(seed)


@torch.no_grad()
def generate_responses(model, tok: Tokenizer, instructions: list[str], *, device, dtype=torch.float32,
                       temperature=0.0, generator=None, max_new_tokens=MAX_NEW_TOKENS, batch_size=64):
    """Answer each instruction in the chat template. Returns (texts, token lists without EOS, ended_with_eos)."""
    prompts = [tok.encode(chat_prompt(x)) for x in instructions]
    return generate_from_ids(model, tok, prompts, device=device, dtype=dtype, temperature=temperature,
                             generator=generator, max_new_tokens=max_new_tokens, batch_size=batch_size)


@torch.no_grad()
def generate_from_ids(model, tok: Tokenizer, prompts: list[list[int]], *, device, dtype=torch.float32,
                      temperature=0.0, generator=None, max_new_tokens=MAX_NEW_TOKENS, batch_size=64):
    """Answer prompts given as token ids (already templated and truncated to fit the context), `batch_size`
    prompts at a time, left-padded. `generator` must live on `device` (make_generator); greedy decoding
    (temperature 0) needs none. Returns (texts, token lists without EOS, ended_with_eos)."""
    texts, token_lists, ended = [], [], []
    model.eval()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        budget = min(max_new_tokens, model.config.block_size - max(map(len, chunk)))
        if budget < 1:
            raise ValueError(f"a prompt of {max(map(len, chunk))} tokens leaves no room in the context of "
                             f"{model.config.block_size}; truncate prompts first (data.encode_prompts)")
        batch = collate([(p, len(p)) for p in chunk], tok.eos_id, side="left")
        with common.autocast(device, dtype):
            out = model.generate(batch["input_ids"].to(device), budget, temperature=temperature,
                                 attention_mask=batch["attention_mask"].to(device), eos_token_id=tok.eos_id,
                                 generator=generator)
        new = out[:, batch["input_ids"].size(1) :].tolist()
        for row in new:
            stop = row.index(tok.eos_id) if tok.eos_id in row else len(row)
            token_lists.append(row[:stop])
            ended.append(stop < len(row))
            texts.append(tok.decode(row[:stop]))
    return texts, token_lists, ended

