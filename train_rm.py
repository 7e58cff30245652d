"""
Stage 2 — the reward model: learn which of two responses people prefer.
Teaches: a scalar reward learned from pairwise preferences (Bradley-Terry) turns "which is better" into a number.

A GPT backbone, initialized from the SFT model as in InstructGPT, with a linear head that reads the final
hidden state of the LAST REAL TOKEN of prompt + response (the EOS) and outputs one scalar r(x, y).
Trained on preference pairs with the Bradley-Terry model (Christiano et al. 2017; Ouyang et al. 2022 eq. 1):

    P(y_c > y_r | x) = sigma(r(x, y_c) - r(x, y_r))
    L_RM = - mean over pairs of log sigma(r(x, y_c) - r(x, y_r) - m)

with an optional margin m per pair (Llama 2's variant; 0 by default). `logsigmoid` keeps it finite for any
reward gap (log(sigmoid(-100)) underflows to -inf; logsigmoid(-100) is exactly -100).

After training the head is normalized: rewards of the SFT model's own samples on training prompts get
mean 0 and std 1 (stored as buffers in the checkpoint), so PPO's reward and KL coefficient are on a known
scale whatever the RM learned.

The last-token index comes from the attention mask, never from token ids: GPT-2 pads with its EOS id, so
"first EOS" would find padding or the real EOS depending on the batch.

Simplifications versus InstructGPT: pairs, not K-way rankings; one pass of random minibatches; a tiny model.

Run it:
    python train_rm.py                                  # toy world, from checkpoints/sft, ~1 minute on CPU
    python train_rm.py --steps 3 --out /tmp/rm          # smoke run
    python train_rm.py --init checkpoints/sft --data hh-rlhf --block-size 512 --lr 1e-5 --steps 2000   # GPU
    torchrun --nproc_per_node 8 train_rm.py ...    # several GPUs; --lora-rank 8: adapters + head train (docs/scale.md)
"""

import argparse
import time

import torch
import torch.nn.functional as F

from minipost import checkpoint as ckpt
from minipost import common, data, distributed, errors, evaluate, generation

# -----------------------------------------------------------------------------
# Config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="checkpoints/sft",
                   help="checkpoint whose backbone starts the RM (the SFT model), or a GPT-2 name")
    p.add_argument("--policy", default="",
                   help="model whose samples set the reward normalization and judge agreement; empty = --init")
    p.add_argument("--data", default="world",
                   help="world | hh-rlhf | PATH (.jsonl / .jsonl.gz with prompt, chosen, rejected)")
    evaluate.add_policy_pair_args(p, "the policy's")
    p.add_argument("--steps", type=common.positive_int, default=100,
                   help="optimizer steps (held-out accuracy plateaus by ~50)")
    p.add_argument("--batch-size", type=common.positive_int, default=32, help="preference pairs per step")
    p.add_argument("--micro-batch-size", type=common.nonneg_int, default=0,
                   help="pairs per forward/backward pass (gradients accumulate to --batch-size; memory grows with "
                        "it: 2 sequences a pair); 0 = the whole batch at once")
    p.add_argument("--block-size", type=common.auto_int, default=-1,
                   help="max tokens per sequence; -1 = the model's context")
    p.add_argument("--lr", type=common.positive_float, default=1e-4, help="peak learning rate")
    p.add_argument("--warmup", type=common.nonneg_int, default=10, help="linear warmup steps")
    p.add_argument("--min-lr-ratio", type=common.unit_float, default=0.1, help="cosine decays to this fraction of --lr")
    p.add_argument("--weight-decay", type=common.nonneg_float, default=0.0, help="AdamW weight decay on matrices")
    p.add_argument("--grad-clip", type=common.nonneg_float, default=1.0, help="max gradient norm; 0 = off")
    p.add_argument("--holdout", type=common.fraction_float, default=0.05,
                   help="held-out fraction for datasets without a held-out split")
    p.add_argument("--eval-every", type=common.positive_int, default=50, help="held-out pair accuracy every N steps")
    p.add_argument("--eval-pairs", type=common.nonneg_int, default=256,
                   help="held-out pairs scored every --eval-every steps (a fixed subset, so the periodic check "
                        "stays cheap on a large held-out split); the final accuracy uses them all; 0 = all")
    p.add_argument("--norm-samples", type=common.positive_int, default=256,
                   help="SFT samples that set the reward normalization (on the toy world's RL prompts, or on the "
                        "prompts of --data's training pairs, left-truncated to leave room for the answer)")
    p.add_argument("--samples", type=common.nonneg_int, default=8,
                   help="real data: held-out prompts whose policy samples are printed with their reward and "
                        "written to samples.jsonl")
    p.add_argument("--agreement-rounds", type=common.positive_int, default=2,
                   help="pairs of SFT samples per held-out prompt for judge agreement")
    p.add_argument("--skip-eval", action="store_true",
                   help="skip normalization samples and judge agreement (smoke tests)")
    p.add_argument("--eval-limit", type=common.nonneg_int, default=0,
                   help="judge agreement on this many held-out prompts; 0 = all")
    common.add_lora_args(p)
    common.add_common_args(p, out_dir="checkpoints/rm", save_every=200)
    args = p.parse_args(argv)
    evaluate.check_policy_pair_args(p, args)
    return args


# -----------------------------------------------------------------------------
# The loss


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """-log sigma(r_c - r_r - m), mean over pairs. r_chosen, r_rejected, margin: (B,)."""
    # EXERCISE bradley_terry: -log sigma(r_c - r_r - m), mean over pairs
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()
    # END EXERCISE bradley_terry


def score_pairs(rm, pairs: list[data.EncodedPair], eos_id, device, dtype):
    """(r(x, y_c) (B,), r(x, y_r) (B,), margin (B,)): each reward read at the sequence's last real token
    (GPTScalar.score), sequences batched by length (data.per_pair)."""
    margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32, device=device)
    with common.autocast(device, dtype):
        reward_chosen, reward_rejected = data.per_pair(lambda b: rm.score(b["input_ids"], b["attention_mask"]),
                                                       pairs, eos_id, device)
    return reward_chosen.float(), reward_rejected.float(), margin


@torch.no_grad()
def heldout_accuracy(rm, pairs, eos_id, device, dtype) -> float:
    """Share of pairs where r(chosen) > r(rejected)."""
    rm.eval()

    def margins(start, chunk):
        reward_chosen, reward_rejected, _ = score_pairs(rm, chunk, eos_id, device, dtype)
        return reward_chosen - reward_rejected

    accuracy = common.pair_accuracy(margins, pairs)
    rm.train()
    return accuracy


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    device = distributed.setup(common.pick_device(args.device))  # torchrun: join the process group (else a no-op)
    args.fused_attn = common.attention_for(device, args.fused_attn)  # default: fused on CUDA only
    dtype, why = common.pick_dtype(device, args.dtype)
    common.seed_everything(args.seed)  # before the model: its scalar head starts from random weights
    try:
        ckpt.prepare_output_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        rm, tok, init_config = common.load_model(args.init, device, kind="scalar", fused_attn=args.fused_attn)
        data.check_world_seed(args.data, init_config, args.init)  # the toy world it was trained in
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    common.setup_training(rm, args, train_also=("head",))  # --lora-rank: adapters + the fresh scalar head train
    block_size, _ = common.stage_context(args.block_size, rm.config.block_size)
    common.print_config("train_rm", args, {"device": device, "dtype": why, "block_size": block_size})

    # ---- data: preference pairs, and judge-labelled pairs of the policy's own samples
    def sampler():
        return common.frozen(common.load_model(args.policy or args.init, device, fused_attn=args.fused_attn)[0])

    train_enc, val_enc, data_stats = evaluate.load_preference_pairs(args, tok, block_size, sampler=sampler,
                                                                    sampler_dir=args.policy or args.init,
                                                                    device=device, dtype=dtype)
    data_fingerprint = data.data_fingerprint(args.data)  # the sha256 of the files trained on, for the checkpoint

    val_check = data.fixed_subset(val_enc, args.eval_pairs)  # the periodic check: the same pairs every time
    micro = args.micro_batch_size or args.batch_size

    optimizer = common.make_optimizer(rm, args.lr, args.weight_decay)
    data_rng = generation.index_generator(args.seed)

    def save(metrics, train_state):
        common.save_stage(args.out, rm, stage="rm", kind="scalar", tokenizer=tok, args=args, metrics=metrics,
                          train_state=train_state,
                          extra={"init": args.init, "world_seed": init_config.get("world_seed", 0),
                                 "data_stats": data_stats, "data": data_fingerprint})

    saver = common.Checkpointer(args, args.steps, rm, save, optimizer=optimizer, data_rng=data_rng)
    start = saver.start()
    log = saver.logger(args.steps)

    # ---- the training loop
    rm.train()
    for step in range(start, args.steps):
        t0 = time.time()
        lr = common.lr_at(step, args.steps, args.lr, args.warmup, args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        picks = torch.randint(0, len(train_enc), (args.batch_size,), generator=data_rng).tolist()
        picks = distributed.shard(picks)  # DDP: this rank's slice of the global batch (all of it in one process)
        # ---- TRAINING STEP BEGIN
        # Micro-batches: each chunk's mean loss is weighted by its share of the batch, so the accumulated
        # gradient is exactly that of the batch's mean loss.
        optimizer.zero_grad(set_to_none=True)
        chunks, loss = [], 0.0
        for i in range(0, len(picks), micro):
            chunk = [train_enc[j] for j in picks[i : i + micro]]
            r_c, r_r, m = score_pairs(rm, chunk, tok.eos_id, device, dtype)  # (b,) each
            chunk_loss = bradley_terry_loss(r_c, r_r, m) * (len(chunk) / args.batch_size)  # of the GLOBAL batch
            common.check_finite(chunk_loss, step)
            chunk_loss.backward()
            loss += chunk_loss.detach()
            chunks.append((r_c.detach(), r_r.detach()))
        reward_chosen, reward_rejected = (torch.cat(r) for r in zip(*chunks))  # (B,) each
        distributed.all_reduce_grads(rm, average=False)  # DDP: the shares add up to the global batch's gradient
        max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(rm.parameters(), max_norm)
        optimizer.step()
        # ---- TRAINING STEP END; what follows only measures
        metrics = dict(loss=loss.item(), accuracy=(reward_chosen > reward_rejected).float().mean().item(),
                       margin=(reward_chosen - reward_rejected).mean().item(), lr=lr, grad_norm=grad_norm.item(),
                       ms=common.seconds_since(t0, device) * 1000)
        metrics = distributed.mean_metrics(metrics)  # DDP: the mean over ranks (loss: their sum = the batch's)
        metrics["loss"] *= distributed.world_size()
        if val_enc and ((step + 1) % args.eval_every == 0 or step == args.steps - 1) and distributed.is_main():
            metrics["val_accuracy"] = heldout_accuracy(rm, val_check, tok.eos_id, device, dtype)
        log.log(step, **metrics)
        saver.step_done(step + 1)

    print(f"peak memory {common.peak_memory_mb(device):.0f} MB")
    distributed.cleanup()  # DDP: training is over; rank 0 alone evaluates and saves
    if not distributed.is_main():
        return
    rm.eval()
    metrics = {"pair_accuracy": heldout_accuracy(rm, val_enc, tok.eos_id, device, dtype) if val_enc else None,
               "heldout_pairs": len(val_enc)}
    common.plot_log(f"{args.out}/log.jsonl", f"{args.out}/curves.png", ["loss", "accuracy", "margin", "val_accuracy"],
                    "reward model (train_rm.py)")

    if not args.skip_eval:
        from minipost.tokenizer import chat_prompt

        policy, _, _ = common.load_model(args.policy or args.init, device, fused_attn=args.fused_attn)
        common.frozen(policy)
        sample_rng = generation.make_generator(device, args.seed + 1)

        # ---- normalize: SFT samples on training prompts get reward mean 0, std 1. The prompts are those PPO
        # will see: the toy world's RL prompts, or the prompts of the training pairs (already left-truncated
        # by encode_pairs; cut again if needed so that an answer of MAX_NEW_TOKENS still fits the context).
        room = max(1, block_size - generation.MAX_NEW_TOKENS)
        if args.data == "world":
            world_prompts = [r["prompt"] for r in data.load_prompts("world")[0]][: args.norm_samples]
            norm_prompts, _ = data.encode_prompts(tok, world_prompts, room)
        else:
            norm_prompts = [ids[-room:] for ids in data.fixed_subset(data.unique_prompts(train_enc), args.norm_samples)]
        _, toks, ended = generation.generate_from_ids(policy, tok, norm_prompts, device=device, dtype=dtype,
                                                    temperature=1.0, generator=sample_rng)
        r = evaluate.rewards_of(rm, tok, norm_prompts, toks, ended, device, dtype)
        shift = rm.reward_shift + r.mean() * rm.reward_scale  # undo the current normalization, then set the new one
        scale = rm.reward_scale * r.std().clamp(min=1e-6)
        rm.reward_shift.copy_(shift)
        rm.reward_scale.copy_(scale)
        metrics["norm_shift"], metrics["norm_scale"] = shift.item(), scale.item()
        print(f"reward normalization: shift {shift.item():.4f}, scale {scale.item():.4f} "
              f"(from {len(norm_prompts)} SFT samples)")

        # ---- real data: the policy's answers to fixed held-out prompts, with their (normalized) reward
        if args.data != "world" and args.samples and val_enc:
            held = data.fixed_subset(data.unique_prompts(val_enc), args.samples)
            rows = evaluate.side_by_side({"policy": policy}, tok, held, max_new_tokens=generation.MAX_NEW_TOKENS,
                                         device=device, dtype=dtype, rm=rm)
            evaluate.write_side_by_side(args.out, rows, "the policy's answers to held-out prompts (greedy), "
                                                        "with their reward")

        # ---- agreement with the gold judge on fresh pairs of SFT samples (toy world)
        if args.data == "world":
            from minipost.world import build_world, judge, lookup

            world = build_world(seed=init_config.get("world_seed", 0), n_docs=1)
            eval_instr = [p["prompt"] for p in world.eval_prompts]
            if args.eval_limit:
                eval_instr = eval_instr[:: max(1, len(eval_instr) // args.eval_limit)][: args.eval_limit]
            eval_instr = eval_instr * args.agreement_rounds  # several fresh pairs per prompt: a steadier estimate
            a_txt, a_tok, a_end = generation.generate_responses(policy, tok, eval_instr, device=device, dtype=dtype,
                                                              temperature=1.0, generator=sample_rng)
            b_txt, b_tok, b_end = generation.generate_responses(policy, tok, eval_instr, device=device, dtype=dtype,
                                                              temperature=1.0, generator=sample_rng)
            prompts_t = [tok.encode(chat_prompt(x)) for x in eval_instr]
            ra = evaluate.rewards_of(rm, tok, prompts_t, a_tok, a_end, device, dtype)
            rb = evaluate.rewards_of(rm, tok, prompts_t, b_tok, b_end, device, dtype)
            agree, counted, examples, by_kind = 0, 0, [], {}
            for i, x in enumerate(eval_instr):
                ja, jb = judge(x, a_txt[i]).score, judge(x, b_txt[i]).score
                examples.append((x, a_txt[i], ra[i].item(), ja))
                if ja == jb:
                    continue  # the judge ties: no preference to agree with
                counted += 1
                agreed = int((ja > jb) == (ra[i] > rb[i]).item())
                agree += agreed
                kind = by_kind.setdefault(lookup(x)["kind"], [0, 0])  # [agreed, counted] per prompt kind
                kind[0], kind[1] = kind[0] + agreed, kind[1] + 1
            metrics["judge_agreement"] = agree / counted if counted else None
            metrics["judge_pairs"] = counted
            metrics["judge_agreement_by_kind"] = {k: a / n for k, (a, n) in sorted(by_kind.items())}
            print("judge agreement by prompt kind: "
                  + ", ".join(f"{k} {a}/{n}" for k, (a, n) in sorted(by_kind.items())))
            print("--- SFT samples with their reward (RM) and gold score (judge)")
            for x, y, rwd, js in examples[:: max(1, len(examples) // 8)][:8]:
                print(f"  r {rwd:+.2f} | gold {js:+.2f} | {x!r} -> {y[:90]!r}")

    saver.save(args.steps, metrics)
    evaluate.write_eval(args.out, {"metrics": metrics})
    print(f"pair accuracy (held-out): {common.fmt_pct(metrics['pair_accuracy'])}; "
          f"judge agreement: {common.fmt_pct(metrics.get('judge_agreement'))}; wrote {args.out}")


if __name__ == "__main__":
    errors.run(main)
