"""
Stage 0 — pre-training the base model: next-token prediction on "the internet".
Teaches: a language model learns facts and styles by predicting the next token, and that alone makes no assistant.

Objective (next-token cross-entropy, averaged over tokens):

    L_pretrain = -(1/N) * sum_t log P(x_t | x_<t)

By default the `tiny` GPT-2 (4 layers, 256 wide, 4,096-token GPT-2 vocabulary, 4.2M parameters) learns the
toy world's corpus (minipost/world.py): encyclopedia prose, quiz lists, forum threads, flashcards, Q&A pages,
how-to pages, poems, sums, antonyms and spam. It ends up knowing the world's facts and skills (knowledge and
skill probes) -- and, like GPT-2, it continues a question instead of answering it, because nothing in its
corpus looks like an assistant. Post-training fixes that.

With `--init gpt2` (or gpt2-medium / -large / -xl) nothing is trained: the official weights are
downloaded once into checkpoints/pretrained/ and written as the base checkpoint, so every later stage
runs on the real GPT-2 unchanged.

Simplifications versus GPT-2's pre-training: a tiny model and corpus; random windows of block_size tokens
from one concatenated token stream (documents separated by <|endoftext|>), no document masking.

Run it:
    python train_base.py                       # tiny model, toy world, ~4 minutes on a 2-core CPU
    python train_base.py --steps 20 --n-docs 2000 --out /tmp/base   # a smoke run, seconds
    python train_base.py --init gpt2           # GPU or CPU: the official 124M weights as the base
    torchrun --nproc_per_node 8 train_base.py --preset gpt2   # 8 GPUs, data parallel (docs/scale.md)
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from minipost import checkpoint as ckpt
from minipost import common, distributed, errors, generation
from minipost.model import GPT, OFFICIAL, PRESETS, config_from_preset
from minipost.tokenizer import Tokenizer

# -----------------------------------------------------------------------------
# Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="",
                   help=f"empty = train the preset from scratch; or GPT-2 weights, no training: {' | '.join(OFFICIAL)} "
                        f"(downloaded), a directory written by Hugging Face's save_pretrained, or a .safetensors file")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS),
                   help="model shape to train from scratch (minipost/model.py PRESETS)")
    p.add_argument("--n-docs", type=common.positive_int, default=60000, help="documents in the toy-world corpus")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the toy world (facts split, corpus, demos)")
    p.add_argument("--steps", type=common.positive_int, default=800, help="optimizer steps")
    p.add_argument("--batch-size", type=common.positive_int, default=16, help="sequences per step")
    p.add_argument("--block-size", type=common.auto_int, default=-1,
                   help="tokens per sequence; -1 = the preset's context")
    p.add_argument("--lr", type=common.positive_float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup", type=common.nonneg_int, default=40, help="linear warmup steps")
    p.add_argument("--min-lr-ratio", type=common.unit_float, default=0.1, help="cosine decays to this fraction of --lr")
    p.add_argument("--weight-decay", type=common.nonneg_float, default=0.1, help="AdamW weight decay on matrices")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--dropout", type=common.unit_float, default=0.0, help="dropout during pre-training")
    p.add_argument("--log-every", type=common.positive_int, default=25, help="print a log line every N steps")
    p.add_argument("--eval-every", type=common.positive_int, default=250, help="held-out loss every N steps")
    p.add_argument("--skip-eval", action="store_true", help="skip the final judge evaluation (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0,
                   help="evaluate on this many held-out prompts; 0 = all")
    common.add_common_args(p, out_dir="checkpoints/base", save_every=250)
    args = p.parse_args(argv)
    if args.block_size != -1 and args.block_size < MIN_BLOCK:
        p.error(f"--block-size {args.block_size}: must be at least {MIN_BLOCK} tokens (or -1 = the preset's)")
    return args


MIN_BLOCK = 64  # the evaluation's chat prompts take up to 31 tokens, and the answer needs room


# -----------------------------------------------------------------------------
# Data: the corpus as one token stream; batches are random windows of it


def tokenize_corpus(docs: list[str], tok: Tokenizer) -> np.ndarray:
    """Documents -> one uint16/uint32 stream, each document followed by <|endoftext|>."""
    ids = tok.enc.encode_ordinary_batch(docs, num_threads=2)
    stream = np.fromiter((t for doc in ids for t in doc + [tok.eos_id]), dtype=np.int64)
    return stream.astype(np.uint16 if tok.vocab_size <= 65536 else np.uint32)


def get_batch(stream: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator):
    """x, y (B, T): y is x shifted by one token."""
    starts = torch.randint(0, len(stream) - block_size - 1, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    chunk = stream[starts[:, None] + offsets[None, :]].long()  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all B*T positions (fp32). logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


@torch.no_grad()
def held_out_loss(model, stream, args, device, dtype, n_batches=8) -> float:
    windows_rng = generation.index_generator(1234)  # the same windows every time: comparable numbers
    model.eval()
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(stream, args.batch_size, args.block_size, windows_rng)
        with common.autocast(device, dtype):
            losses.append(lm_loss(model(x.to(device)), y.to(device)).item())
    model.train()
    return sum(losses) / len(losses)


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(common.pick_device(args.device))  # torchrun: join the process group (else a no-op)
    args.fused_attn = common.attention_for(device, args.fused_attn)  # default: fused on CUDA only
    dtype, why = common.pick_dtype(device, args.dtype)
    if args.init:  # GPT-2 weights as the base: import and save, nothing to train
        try:
            # the weights first: a failed import leaves no --out behind
            model, tok, _ = common.load_model(args.init, device, fused_attn=args.fused_attn)
            ckpt.prepare_output_dir(args.out, resume=False, overwrite=args.overwrite)
        except ckpt.CheckpointError as e:
            raise SystemExit(f"error: {e}")
        common.print_config("train_base (import)", args, {"device": device, "params": model.num_params()})
        common.save_stage(args.out, model, stage="base", kind="lm", tokenizer=tok, args=args,
                          metrics={}, extra={"init": args.init})
        print(f"wrote {args.out} ({args.init}, {model.num_params() / 1e6:.1f}M parameters)")
        return

    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    common.seed_everything(args.seed)

    config = config_from_preset(args.preset, dropout=args.dropout, fused_attn=args.fused_attn)
    if args.block_size > 0:
        config.block_size = args.block_size
    args.block_size = config.block_size
    tok = Tokenizer(config.vocab_size)
    model = GPT(config).to(device)
    common.setup_training(model, args)  # --grad-checkpoint
    if args.batch_size % distributed.world_size():
        raise SystemExit(f"error: --batch-size {args.batch_size} must divide by the "
                         f"{distributed.world_size()} processes")
    params = f"{model.num_params() / 1e6:.2f}M"
    common.print_config("train_base", args, {"device": device, "dtype": why, "params": params})

    # ---- data: the toy world's corpus, 98% train / 2% held out (split by document)
    from minipost.world import build_world

    t0 = time.time()
    world = build_world(seed=args.world_seed, n_docs=args.n_docs)
    n_val = max(1, len(world.corpus) // 50)
    train_stream = torch.from_numpy(tokenize_corpus(world.corpus[n_val:], tok).astype(np.int64))
    val_stream = torch.from_numpy(tokenize_corpus(world.corpus[:n_val], tok).astype(np.int64))
    print(f"corpus: {len(world.corpus)} documents, {len(train_stream) / 1e6:.2f}M train tokens, "
          f"{len(val_stream) / 1e3:.1f}k held-out tokens ({time.time() - t0:.1f}s)")
    if len(val_stream) <= args.block_size + 1:
        raise SystemExit(f"error: held-out corpus of {len(val_stream)} tokens is shorter than a block; raise --n-docs")

    optimizer = common.make_optimizer(model, args.lr, args.weight_decay)
    data_rng = generation.index_generator(args.seed)

    def save(metrics, train_state):
        common.save_stage(args.out, model, stage="base", kind="lm", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state, extra={"world_seed": args.world_seed})

    saver = common.Checkpointer(args, args.steps, model, save, optimizer=optimizer, data_rng=data_rng)
    start = saver.start()
    log = saver.logger(args.steps)

    # ---- the training loop
    model.train()
    t_last, tokens_since = time.time(), 0
    for step in range(start, args.steps):
        lr = common.lr_at(step, args.steps, args.lr, args.warmup, args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        x, y = get_batch(train_stream, args.batch_size, args.block_size, data_rng)
        x, y = distributed.shard(x), distributed.shard(y)  # DDP: this rank's rows of the global batch
        x, y = x.to(device), y.to(device)
        # ---- TRAINING STEP BEGIN
        with common.autocast(device, dtype):
            logits = model(x)  # (B, T, V)
        loss = lm_loss(logits, y)
        common.check_finite(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads(model, average=True)  # DDP: equal shares of a token mean: the mean gradient
        max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        # ---- TRAINING STEP END; what follows only measures, logs and saves
        tokens_since += x.numel()

        last = step == args.steps - 1
        if step % args.log_every == 0 or last:
            dt = common.seconds_since(t_last, device)  # after the device's queued work
            metrics = distributed.mean_metrics(dict(loss=loss.item(), lr=lr, grad_norm=grad_norm.item()))
            if ((step > 0 and step % args.eval_every == 0) or last) and distributed.is_main():
                metrics["val_loss"] = held_out_loss(model, val_stream, args, device, dtype)
            metrics["tok/s"] = tokens_since / dt
            log.log(step, **metrics)
            t_last, tokens_since = time.time(), 0
        saver.step_done(step + 1)

    distributed.cleanup()  # DDP: training is over; rank 0 alone evaluates and saves
    if not distributed.is_main():
        return
    val = held_out_loss(model, val_stream, args, device, dtype)
    metrics = {"val_loss": val, "steps": args.steps}
    saver.save(args.steps, metrics)
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/loss.png", ["loss", "val_loss"],
                    "pre-training (train_base.py)")
    print(f"held-out loss {val:.4f}; wrote {args.out}")

    # ---- what the base model knows, and how it answers (it doesn't, yet)
    if not args.skip_eval:
        from minipost import evaluate

        model.eval()
        result = evaluate.evaluate_model(model, tok, world, device=device, dtype=dtype, seed=args.seed,
                                         limit=args.eval_limit)
        evaluate.print_samples(result, n=4, title="base model, chat-template prompts (greedy)")
        evaluate.write_eval(args.out, result)
        knowledge = common.fmt_pct(result['metrics']['knowledge_rank_accuracy'])
        skills = common.fmt_pct(result['metrics']['skill_rank_accuracy'])
        print(f"knowledge (held-out facts / skills ranked first by likelihood): {knowledge} / {skills}; "
              f"answers in chat format: {common.fmt_pct(result['metrics']['format_rate'])}")


if __name__ == "__main__":
    errors.run(main)
