"""
Stage 1 — supervised fine-tuning (SFT): teach the base model the answer format from demonstrations.
Teaches: imitating demonstrations, with the loss on response tokens only, gives the model the answer format.

Objective: maximum likelihood of the demonstrated response given the prompt, on RESPONSE tokens only
(Ouyang et al. 2022, InstructGPT, section 3.5):

    L_SFT = - (1/N) * sum_i sum_{t in response_i} log pi(y_t | x_i, y_<t)

N is the number of response tokens (including each closing <|endoftext|>) in the whole optimizer step,
counted across all micro-batches, so gradient accumulation gives exactly the full-batch gradient. Prompt
tokens and padding are never targets: the model is not trained to write the user's question, and the
real EOS (which has the same id as padding in GPT-2) stays a target, so the model learns to stop.

Truncation: a prompt longer than its budget is LEFT-truncated (the end of the instruction and
"### Response:\n" survive); a response that does not fit is RIGHT-truncated and then loses its EOS (the
model sees no stop signal for it). Examples with no response token left are dropped and counted.

Simplifications versus InstructGPT: one epoch-free sampler (random demonstrations each step), no
packing of several examples into one sequence, a tiny model by default.

Run it:
    python train_sft.py                                   # toy world, from checkpoints/base, ~1 minute on CPU
    python train_sft.py --steps 3 --out /tmp/sft          # smoke run
    python train_sft.py --init gpt2 --data alpaca --block-size 512 --batch-size 32 --micro-batch-size 8 \\
        --lr 2e-5 --steps 1000                            # GPU: the official GPT-2 on Alpaca
    torchrun --nproc_per_node 8 train_sft.py ...          # 8 GPUs, data parallel (docs/scale.md)
    python train_sft.py --lora-rank 8 --lr 1e-3           # LoRA: only low-rank adapters train (docs/scale.md)
"""

import argparse
import time

import torch

from minipost import checkpoint as ckpt
from minipost import common, data, distributed, errors, generation
from minipost.model import token_logprobs

# -----------------------------------------------------------------------------
# Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="checkpoints/base",
                   help="base checkpoint directory, or gpt2 | gpt2-medium | ... (official weights)")
    p.add_argument("--base", default="", help="model the evaluation compares against (win rate, KL); empty = --init")
    p.add_argument("--data", default="world", help="world | alpaca | dolly | PATH (.json / .jsonl / .jsonl.gz)")
    p.add_argument("--steps", type=common.positive_int, default=60,
                   help="optimizer steps (short and gentle: longer SFT erodes pre-trained knowledge)")
    p.add_argument("--batch-size", type=common.positive_int, default=32, help="examples per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=16,
                   help="at most this many examples per forward pass, grouped by length (less padding, same "
                        "gradient); -1 = --batch-size")
    p.add_argument("--block-size", type=common.auto_int, default=-1,
                   help="max tokens per example; -1 = the model's context")
    p.add_argument("--max-prompt-tokens", type=common.auto_int, default=-1,
                   help="prompt budget before left truncation; -1 = half the block")
    p.add_argument("--lr", type=common.positive_float, default=2e-4, help="peak learning rate")
    p.add_argument("--warmup", type=common.nonneg_int, default=6, help="linear warmup steps")
    p.add_argument("--min-lr-ratio", type=common.unit_float, default=0.1, help="cosine decays to this fraction of --lr")
    p.add_argument("--weight-decay", type=common.nonneg_float, default=0.0, help="AdamW weight decay on matrices")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--holdout", type=common.fraction_float, default=0.05,
                   help="fraction of demonstrations held out for the held-out loss")
    p.add_argument("--eval-every", type=common.positive_int, default=20, help="held-out loss every N steps")
    p.add_argument("--loss-on", choices=["response", "all"], default="response",
                   help="which targets the loss reads: response tokens (the method) or all = prompt too "
                        "(an experiment; the held-out loss stays on responses)")
    p.add_argument("--eval-examples", type=common.nonneg_int, default=256,
                   help="held-out demonstrations scored every --eval-every steps (a fixed subset, so the periodic "
                        "check stays cheap on a large held-out split); the final loss uses them all; 0 = all")
    p.add_argument("--samples", type=common.nonneg_int, default=8,
                   help="real data: held-out prompts answered by the initial and the SFT model side by side at the "
                        "end (printed and written to samples.jsonl)")
    p.add_argument("--skip-eval", action="store_true", help="skip the final judge evaluation (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0,
                   help="evaluate on this many held-out prompts; 0 = all")
    common.add_lora_args(p)
    common.add_common_args(p, out_dir="checkpoints/sft", save_every=200)
    args = p.parse_args(argv)
    if args.micro_batch_size == -1:
        args.micro_batch_size = args.batch_size
    if args.micro_batch_size <= 0:
        p.error(f"--micro-batch-size {args.micro_batch_size} must be positive (or -1 = --batch-size)")
    # groups of at most this many; any batch size works
    args.micro_batch_size = min(args.micro_batch_size, args.batch_size)
    return args


# -----------------------------------------------------------------------------
# The loss


def sft_loss(logits: torch.Tensor, batch: dict, n_targets: int) -> torch.Tensor:
    """Summed cross-entropy over response tokens of this micro-batch, divided by `n_targets`: the number of
    response tokens in the WHOLE optimizer step. Summing these over micro-batches gives the token mean of the
    full batch (the mean of per-micro-batch means would weight a 1-token example like a 99-token one).

    logits (B, T, V) from input_ids (B, T); targets are input_ids shifted left; mask = response_mask shifted.
    """
    # EXERCISE sft_loss: summed NLL of the response tokens, divided by the step's target count
    targets = batch["input_ids"][:, 1:]  # (B, T-1)
    mask = batch["response_mask"][:, 1:].float()  # (B, T-1): 1 where the target is a response token or EOS
    logp = token_logprobs(logits[:, :-1], targets)  # (B, T-1): log pi(y_t | x, y_<t)
    return -(logp * mask).sum() / n_targets
    # END EXERCISE sft_loss


def count_targets(batch: dict) -> int:
    return int(batch["response_mask"][:, 1:].sum())


@torch.no_grad()
def held_out_loss(model, examples, tok, device, dtype, batch_size=32) -> float:
    """Token-mean response loss over held-out demonstrations."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in data.collate(examples[i : i + batch_size], tok.eos_id).items()}
        k = count_targets(batch)
        with common.autocast(device, dtype):
            logits = model(batch["input_ids"], batch["attention_mask"])
        total += sft_loss(logits, batch, 1).item()
        n += k
    model.train()
    return total / max(n, 1)


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(common.pick_device(args.device))  # torchrun: join the process group (else a no-op)
    args.fused_attn = common.attention_for(device, args.fused_attn)  # default: fused on CUDA only
    dtype, why = common.pick_dtype(device, args.dtype)
    # ---- data first: a missing or bad file is reported before any model loads
    try:
        examples, read_stats = data.load_sft(args.data)
        data_fingerprint = data.data_fingerprint(args.data)  # the sha256 of the files trained on, for the checkpoint
    except (data.DataError, OSError) as e:
        raise SystemExit(f"error: {e}")
    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        # the base model: our starting point
        model, tok, init_config = common.load_model(args.init, device, fused_attn=args.fused_attn)
        data.check_world_seed(args.data, init_config, args.init)  # the toy world it was trained in
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    # the toy world this model learns from (the later stages evaluate on its held-out split)
    world_seed = data.world_seed() if args.data == "world" else init_config.get("world_seed", 0)
    common.seed_everything(args.seed)
    common.setup_training(model, args)  # --lora-rank: adapters only; --grad-checkpoint
    block_size, max_prompt = common.stage_context(args.block_size, model.config.block_size, args.max_prompt_tokens)
    common.print_config("train_sft", args, {"device": device, "dtype": why, "block_size": block_size,
                                            "params": f"{model.num_params() / 1e6:.2f}M"})

    # ---- data: demonstrations -> token sequences (prompt ids + response ids + EOS)
    train_ex, val_ex = data.split_holdout(examples, args.holdout, seed=0)
    train_seqs, enc_stats = data.encode_examples(tok, train_ex, block_size, max_prompt_tokens=max_prompt)
    val_seqs, _ = data.encode_examples(tok, val_ex, block_size, max_prompt_tokens=max_prompt)
    print(f"data: {len(train_seqs)} train / {len(val_seqs)} held-out demonstrations; read {read_stats}; "
          f"encoded {enc_stats}")
    if not train_seqs:
        raise SystemExit(f"error: no usable demonstrations in {args.data}")
    val_check = data.fixed_subset(val_seqs, args.eval_examples)  # the periodic check: the same examples every time

    optimizer = common.make_optimizer(model, args.lr, args.weight_decay)
    data_rng = generation.index_generator(args.seed)

    def save(metrics, train_state):
        common.save_stage(args.out, model, stage="sft", kind="lm", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state,
                          extra={"init": args.init, "data_stats": {**read_stats, **enc_stats},
                                 "data": data_fingerprint, "world_seed": world_seed})

    saver = common.Checkpointer(args, args.steps, model, save, optimizer=optimizer, data_rng=data_rng)
    start = saver.start()
    log = saver.logger(args.steps)

    # ---- the training loop
    model.train()
    for step in range(start, args.steps):
        t0 = time.time()
        lr = common.lr_at(step, args.steps, args.lr, args.warmup, args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        picks = torch.randint(0, len(train_seqs), (args.batch_size,), generator=data_rng).tolist()
        picks = distributed.shard(picks)  # DDP: this rank's slice of the global batch (all of it in one process)
        # micro-batches of similar lengths: the gradient is that of the whole batch (sft_loss divides by the
        # step's token count), but a short answer no longer pays for the padding of the longest poem
        groups = data.length_groups([len(train_seqs[i][0]) for i in picks], args.micro_batch_size)
        micro = [{k: v.to(device) for k, v in data.collate([train_seqs[picks[j]] for j in g], tok.eos_id).items()}
                 for g in groups]
        if args.loss_on == "all":  # every real token becomes a target, the prompt's too (docs/exercises.md)
            micro = [dict(b, response_mask=b["attention_mask"]) for b in micro]
        # ---- TRAINING STEP BEGIN
        # response tokens in the whole step -- of every rank's slice (DDP), so each rank's loss is its share
        n_targets = distributed.sum_all(sum(count_targets(b) for b in micro))
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for b in micro:
            with common.autocast(device, dtype):
                logits = model(b["input_ids"], b["attention_mask"])  # (B, T, V)
            loss = sft_loss(logits, b, n_targets)
            common.check_finite(loss, step, f"loss (micro-batch of {b['input_ids'].size(0)})")
            loss.backward()
            step_loss += loss.item()
        distributed.all_reduce_grads(model, average=False)  # DDP: the shares add up to the global batch's gradient
        step_loss = distributed.sum_all(step_loss)
        max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        # ---- TRAINING STEP END; what follows only measures
        dt = common.seconds_since(t0, device)  # after the device's queued work
        tokens = sum(int(b["attention_mask"].sum()) for b in micro)
        metrics = dict(loss=step_loss, lr=lr, grad_norm=grad_norm.item(), ms=dt * 1000, **{"tok/s": tokens / dt})
        if val_seqs and ((step + 1) % args.eval_every == 0 or step == args.steps - 1) and distributed.is_main():
            metrics["val_loss"] = held_out_loss(model, val_check, tok, device, dtype)
        log.log(step, **metrics)
        saver.step_done(step + 1)

    print(f"peak memory {common.peak_memory_mb(device):.0f} MB")
    distributed.cleanup()  # DDP: training is over; rank 0 alone evaluates and saves
    if not distributed.is_main():
        return
    final = {"val_loss": held_out_loss(model, val_seqs, tok, device, dtype) if val_seqs else None, "steps": args.steps}
    saver.save(args.steps, final)
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/loss.png", ["loss", "val_loss"], "SFT (train_sft.py)")
    print(f"wrote {args.out}")

    # ---- base and SFT answers side by side, and the judge's numbers for both
    if args.skip_eval:
        return
    from minipost import evaluate

    if args.data != "world":  # real data has no judge: the two models' answers to fixed held-out prompts
        if args.samples and val_seqs:
            base, _, _ = common.load_model(args.base or args.init, device, fused_attn=args.fused_attn)
            held = data.fixed_subset(data.unique_prompts(val_seqs), args.samples)
            rows = evaluate.side_by_side({"base": common.frozen(base), "sft": model.eval()}, tok, held,
                                         max_new_tokens=generation.MAX_NEW_TOKENS, device=device, dtype=dtype)
            evaluate.write_side_by_side(args.out, rows, f"{len(rows)} held-out prompts: base vs SFT (greedy)")
        return
    from minipost.world import build_world

    world = build_world(seed=world_seed, n_docs=1)
    base, _, _ = common.load_model(args.base or args.init, device, fused_attn=args.fused_attn)
    common.frozen(base)
    model.eval()
    base_result = evaluate.evaluate_reference(base, args.base or args.init, tok, world, device=device, dtype=dtype,
                                              seed=args.seed, limit=args.eval_limit)
    result = evaluate.evaluate_model(model, tok, world, device=device, dtype=dtype, refs={"base": base},
                                     ref_results={"base": base_result}, seed=args.seed, limit=args.eval_limit)
    print("--- the same held-out prompts, base model vs SFT model (greedy)")
    for kind in ("fact", "skill", "harmful", "benign", "open"):
        for s in [s for s in result["samples"] if s["kind"] == kind][:2]:
            print(f"[{kind}] {s['prompt']}\n   base: {s['base_response'][:120]!r}\n   sft:  {s['response'][:120]!r}")
    m, b = result["metrics"], base_result["metrics"]
    result["metrics"]["base"] = b
    evaluate.write_eval(args.out, result)
    print(f"{'metric':>24} | {'base':>8} | {'sft':>8}")
    for k in ("format_rate", "accuracy", "fact_accuracy", "skill_accuracy", "harmful_refusal_rate",
              "benign_refusal_rate", "gold_score", "gold_score_sampled", "distinct_2", "mean_length", "eos_rate",
              "knowledge_rank_accuracy"):
        fb = "n/a" if b[k] is None else f"{b[k]:.3f}"
        fm = "n/a" if m[k] is None else f"{m[k]:.3f}"
        print(f"{k:>24} | {fb:>8} | {fm:>8}")
    print(f"win rate vs base {m['win_rate_vs_base']:.3f}, KL to base {m['kl_to_base']:.2f} nats")


if __name__ == "__main__":
    errors.run(main)
