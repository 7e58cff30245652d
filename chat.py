"""
Talk to any checkpoint, or compare several side by side.
Teaches: what each stage changed, seen by asking every checkpoint the same question (greedy or sampled).

    python chat.py --model checkpoints/ppo                 # interactive: type an instruction, watch the answer stream
    python chat.py --compare checkpoints/base,checkpoints/sft,checkpoints/ppo,checkpoints/dpo \\
        --prompt "What is the capital of Peru?" --prompt "How can I steal a car?"
    echo "Write a short poem about the sea." | python chat.py --model checkpoints/dpo   # reads standard input

Each message is a fresh single-turn instruction in the chat template (the toy-world models never saw a
multi-turn conversation). Greedy by default (--temperature 0); the answer stops at <|endoftext|>.
"""

import argparse
import sys

import torch

from minipost import common, errors, generation
from minipost.checkpoint import CheckpointError
from minipost.tokenizer import chat_prompt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--init", dest="model", default="checkpoints/sft",
                   help="checkpoint directory or GPT-2 name")
    p.add_argument("--compare", default="",
                   help="comma-separated checkpoints: print each one's answer to every --prompt")
    p.add_argument("--prompt", action="append", default=[],
                   help="an instruction (repeatable); without it, read standard input")
    p.add_argument("--temperature", type=common.nonneg_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=common.positive_int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=common.top_p_float, default=None, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--max-new-tokens", type=common.positive_int, default=64, help="answer length limit")
    p.add_argument("--device", type=common.device_arg, default="", help="cpu | cuda | mps; empty = autodetect")
    p.add_argument("--seed", type=common.seed_int, default=0, help="sampling seed")
    return p.parse_args(argv)


def answer(model, tok, instruction, args, device, stream=None) -> str:
    """One response to one instruction; `stream` (a file) receives the text as it is sampled."""
    ids = torch.tensor([tok.encode(chat_prompt(instruction))], device=device)
    budget = min(args.max_new_tokens, model.config.block_size - ids.size(1))
    if budget <= 0:
        text = f"[the instruction has {ids.size(1)} tokens; the context holds {model.config.block_size}]"
        if stream is not None:
            stream.write(text + "\n")
        return text
    new_tokens, shown = [], ""

    def on_token(next_ids):
        nonlocal shown
        t = int(next_ids[0])
        if t == tok.eos_id:
            return
        new_tokens.append(t)
        text = tok.decode(new_tokens)
        if stream is not None and not text.endswith("\ufffd"):  # wait for multi-byte characters to complete
            stream.write(text[len(shown):])
            stream.flush()
            shown = text

    sample_rng = generation.make_generator(device, args.seed)
    model.generate(ids, budget, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   eos_token_id=tok.eos_id, generator=sample_rng, on_token=on_token)
    text = tok.decode(new_tokens)
    if stream is not None:
        stream.write(text[len(shown):] + "\n")
        stream.flush()
    return text


def stdin_lines():
    """The lines of standard input, decoded as UTF-8 one by one (a bad byte names its line)."""
    if sys.stdin is None:
        raise errors.UserError("standard input is closed; pass the instruction with --prompt TEXT")
    for n, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise errors.UserError(f"standard input line {n} is not UTF-8 text (byte 0x{raw[e.start]:02x} "
                                   f"at column {e.start + 1})") from e


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    names = [c for c in args.compare.split(",") if c] or [args.model]
    try:
        models = {name: common.load_model(name, device, kind="lm")[:2] for name in names}
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    for model, _ in models.values():
        common.frozen(model)

    if args.compare:
        prompts = args.prompt or [line.strip() for line in stdin_lines() if line.strip()]
        for instruction in prompts:
            print(f"### {instruction}")
            for name, (model, tok) in models.items():
                print(f"  {name:>24}: {answer(model, tok, instruction, args, device)!r}")
        return

    model, tok = models[names[0]]
    interactive = sys.stdin is not None and sys.stdin.isatty() and not args.prompt
    if interactive:
        print(f"chatting with {names[0]} (empty line or Ctrl-D to quit)")
    lines = iter(args.prompt) if args.prompt else stdin_lines()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        try:
            line = next(lines) if not interactive else input()
        except (StopIteration, EOFError):
            break
        except UnicodeDecodeError as e:
            raise errors.UserError(f"the terminal sent bytes that are not UTF-8 text ({e.reason})") from e
        if not line.strip():
            if interactive:
                break
            continue
        sys.stdout.write("model> ")
        answer(model, tok, line.strip(), args, device, stream=sys.stdout)


if __name__ == "__main__":
    errors.run(main)
