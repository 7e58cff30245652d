"""
minipost's GRPO iteration (train_grpo.py) against TRL's GRPOTrainer on the same work: seconds per iteration
(sample a group of G responses for each of P prompts, score them with the verifier, then `epochs` passes of
clipped-surrogate minibatch steps), split into generation / scoring / update, median over alternating rounds.

The same work on both sides:
  model      minipost's GPT (a checkpoint, or the tiny preset at random init) and its copy as
             transformers.GPT2LMHeadModel (benchlib.hf_copy), fp32 logits checked equal before anything is timed
  prompts    the toy world's fact and skill prompts (the ones the verifier can check), in the chat template,
             tokenized once by minipost; each iteration's P prompts drawn as train_grpo.py draws them (`randint`
             from a seeded generator), the same prompts in the same order on both sides. TRL gets each prompt as
             text that its (stand-in, word-level) tokenizer maps back to exactly minipost's ids (checked)
  reward     train_grpo.verifier_reward (1 right, 0 wrong, -0.5 no answer / no EOS), wrapped as a TRL reward
             function that decodes TRL's completion ids with minipost's tokenizer
  settings   train_grpo.py's defaults with --reward verifier: P = 16 prompts x G = 8 samples, temperature 1
             (no top-k / top-p), 32 new tokens at most, the grpo advantage (group mean and Bessel std, eps 1e-4)
             with the seq-mean loss (TRL: loss_type="grpo", scale_rewards="group"), clip 0.2, no KL (beta 0),
             2 epochs of minibatches of 32 responses (TRL: per_device_train_batch_size 32, steps_per_generation 4,
             num_iterations 2), lr 2e-5 with linear warmup over 4 gradient steps, gradient clip 1.0, the same
             optimizer (common.make_optimizer: fused AdamW, betas 0.9/0.95, no weight decay), fp32
  TRL knobs  use_vllm off (transformers' generate, KV cache), gradient_checkpointing=False, shuffle_dataset=False
             (the prompts' order above), logging once per iteration (train_grpo.py logs once per iteration), no
             evaluation, no saving, no reporting

What cannot be made identical (also in bench/README.md): the two sides sample different responses (different random
streams), so response lengths, and hence the work, differ from iteration to iteration; the table shows each side's
mean and longest response (at random init almost none stops early: ~32 tokens on both sides). train_grpo.py computes reference log-probs every iteration to log the KL even with beta 0
(its deviation 5), TRL skips the reference model when beta is 0: minipost does one more no-grad forward over the
batch (its time is shown on its own line). TRL shuffles the rollout batch once and reuses the same minibatches in
its second pass; train_grpo.py reshuffles each epoch (the same amount of work). TRL computes the entropy of every
training minibatch, train_grpo.py of the first epoch's. TRL's LM head runs fused over completion positions
(transformers' fused_lm_head), train_grpo.py's on the response positions (a (b, n, V) logits tensor). Only the
tiny shape in fp32 is measured (the 124M shape would take minutes per iteration on 2 cores).

Timing: TRL's train() runs warmup + rounds iterations; at the end of each of its iterations (a callback at every
S-th optimizer step, S = optimizer steps per iteration) one minipost iteration runs and is subtracted from TRL's
interval, so the two alternate iteration by iteration under the same load. TRL's phases come from timing its own
methods: generation = `_generate` (tokenize prompts, generate, decode), scoring = the rest of
`_generate_and_score_completions` (old log-probs forward, the reward function, advantages, padding), update = the
rest of the iteration (S training steps: forward, loss, backward, clip, AdamW, logging). The first `warmup`
iterations of each side are not timed (train()'s set-up, AdamW's state).

    python bench/trl_grpo.py --threads 1                       # tiny, 1 warm-up + 5 timed iterations per side
    python bench/trl_grpo.py --init checkpoints/sft --threads 1  # from an SFT model: responses that stop at EOS
    python bench/trl_grpo.py --quick                           # seconds: small groups (numbers meaningless)
"""

import argparse
import copy
import gc
import os
import time
import warnings

import torch
import torch.nn.functional as F

import benchlib
import train_grpo
import trl_peer
from minipost import common, data
from minipost.model import GPT, config_from_preset
from minipost.tokenizer import Tokenizer, chat_prompt
from minipost.world import judge, strip_template
from minipost.generation import index_generator, make_generator


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "trl_grpo")
    p.add_argument("--init", default="checkpoints/sft",
                   help="minipost checkpoint (the policy; random init of the tiny preset when it does not exist)")
    p.add_argument("--warmup", type=common.nonneg_int, default=1, help="untimed first iterations of each side")
    p.add_argument("--rounds", type=common.positive_int, default=5,
                   help="timed iterations of each side, alternating; the median is reported")
    p.add_argument("--fused-attn", action="store_true",
                   help="minipost's model with torch's fused attention (train_grpo.py --fused-attn); default: the "
                        "checkpoint's setting (hand-written attention for the pipeline's checkpoints and random init)")
    p.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attention for TRL's model (sdpa: what from_pretrained picks)")
    p.add_argument("--memory", default="", choices=["", "on", "off"],
                   help="peak memory of two iterations of each side in a fresh process (empty = on, off with --quick)")
    # internal: one side in a fresh process, for its peak memory
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="minipost", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.rounds = 1, 2
    args.memory = args.memory or ("off" if args.quick else "on")
    return args


def grpo_settings(quick: bool):
    """train_grpo.py's defaults with --reward verifier (parsed from its own parse_args); --quick shrinks them."""
    hp = train_grpo.parse_args(["--reward", "verifier", "--lr", "2e-5"])  # the recorded results' lr (speed is the same)
    if quick:
        hp.prompts_per_step, hp.group_size, hp.minibatch_size, hp.max_new_tokens = 4, 4, 8, 8
    assert hp.kl_coef == 0 and hp.advantage == "grpo" and hp.loss_agg == "seq-mean", "TRL is configured for these"
    return hp


def load_policy(init: str, device, fused_attn: bool = False):
    """(minipost GPT, where it came from), dropout off; fused_attn=True switches to torch's fused attention."""
    torch.manual_seed(0)
    if init and os.path.isdir(init):
        model, _, _ = common.load_model(init, device, fused_attn=True if fused_attn else None)
        return model, init
    cfg = common.dropout_off(config_from_preset("tiny", fused_attn=fused_attn))
    return GPT(cfg).to(device), "random init (tiny)"


def load_instructions(tok: Tokenizer, hp, block_size: int) -> list[str]:
    """train_grpo.py's prompts for --reward verifier: the world's fact and skill prompts that leave room for
    max_new_tokens, as raw instructions."""
    rows, _ = data.load_prompts("world")
    rows = [r for r in rows if r.get("kind") in ("fact", "skill")]
    room = block_size - hp.max_new_tokens
    return [strip_template(r["prompt"]) for r in rows if len(tok.encode(r["prompt"])) <= room]


def iteration_prompts(instructions: list[str], hp, n: int) -> list[list[str]]:
    """n iterations' prompts, drawn as train_grpo.py draws them (randint from a generator seeded with --seed)."""
    gen = index_generator(hp.seed)
    return [[instructions[i] for i in torch.randint(0, len(instructions), (hp.prompts_per_step,), generator=gen)]
            for _ in range(n)]


# -----------------------------------------------------------------------------
# minipost: one iteration of train_grpo.main's loop (it lives inside main and cannot be imported; keep in step)


def minipost_iterator(policy, ref, tok, hp, device, dtype):
    """A function run(prompts) -> {phase: seconds, ...} doing one iteration of train_grpo.py (verifier reward)."""
    opt = common.make_optimizer(policy, hp.lr, weight_decay=0.0)
    data_rng = index_generator(hp.seed + 1)  # minibatch order
    sample_rng = make_generator(device, hp.seed)
    B, G = hp.prompts_per_step * hp.group_size, hp.group_size
    state = {"grad_step": 0}

    def run(prompts: list[str]) -> dict:
        t0 = time.perf_counter()
        group_of = [x for x in prompts for _ in range(G)]
        policy.eval()
        texts, ended, batch = train_grpo.sample_groups(policy, tok, prompts, G, hp.max_new_tokens, sample_rng,
                                                       device, dtype)
        t_gen = time.perf_counter()
        rewards, _ = train_grpo.rewards_of("verifier", group_of, texts, ended, batch, None, hp.missing_eos_penalty,
                                           device, dtype)  # (B,); the verifier's rewards carry no KL penalty
        advantages = train_grpo.group_advantages(rewards, G, hp.advantage)  # (B,)
        mask = batch["response_mask"]  # (B, n)
        t_reward = time.perf_counter()
        perm = torch.randperm(B, generator=data_rng).to(device)
        old_logp, ref_logp = torch.zeros_like(mask), torch.zeros_like(mask)
        t_ref = 0.0
        with torch.no_grad():
            for idx in perm.split(hp.minibatch_size):
                mb = train_grpo.minibatch(batch, idx)
                old_logp[idx] = train_grpo.response_logprobs(policy, mb, device, dtype)[0]
                t1 = time.perf_counter()
                ref_logp[idx] = train_grpo.response_logprobs(ref, mb, device, dtype)[0]
                t_ref += time.perf_counter() - t1
        t_score = time.perf_counter()

        policy.train()
        acc = []
        for epoch in range(hp.epochs):
            order = perm if epoch == 0 else torch.randperm(B, generator=data_rng).to(device)
            for idx in order.split(hp.minibatch_size):
                common.set_lr(opt, hp.lr * min(1.0, (state["grad_step"] + 1) / max(1, hp.warmup)))
                logp, logits = train_grpo.response_logprobs(policy, train_grpo.minibatch(batch, idx), device, dtype)
                loss, st = train_grpo.grpo_loss(logp, old_logp[idx], None, advantages[idx], mask[idx], clip=hp.clip,
                                                kl_coef=hp.kl_coef, agg=hp.loss_agg, max_len=hp.max_new_tokens)
                common.check_finite(loss, state["grad_step"], "GRPO loss")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), hp.grad_clip if hp.grad_clip > 0 else float("inf"))
                opt.step()
                state["grad_step"] += 1
                acc.append({"loss": loss.item()} | {k: v.item() for k, v in st.items()})
                if epoch == 0:
                    with torch.no_grad():
                        lp = F.log_softmax(logits.float(), dim=-1)  # (b, n, V)
                        ent = -(lp.exp() * lp).sum(-1)  # (b, n)
                        acc[-1]["entropy"] = ((ent * mask[idx]).sum() / mask[idx].sum()).item()
        # the iteration's logged numbers, as main computes them
        groups = rewards.view(-1, G)
        metrics = {"reward": rewards.mean().item(), "reward_std": groups.std(dim=1).mean().item(),
                   "zero_var_groups": (groups.max(dim=1).values == groups.min(dim=1).values).float().mean().item(),
                   "loss": sum(a["loss"] for a in acc) / len(acc),
                   "kl": ((old_logp - ref_logp) * mask).sum(dim=1).mean().item(),
                   "length": mask.sum(dim=1).mean().item()}
        verdicts = [judge(x, y) for x, y in zip(group_of, texts)]
        metrics["gold_score"] = sum(v.score for v in verdicts) / len(verdicts)
        t_end = time.perf_counter()
        return {"generation": t_gen - t0, "score_reward": t_reward - t_gen, "score_logp": t_score - t_reward - t_ref,
                "score_ref": t_ref, "scoring": t_score - t_gen, "update": t_end - t_score, "total": t_end - t0,
                "length": metrics["length"], "max_length": mask.size(1), "reward": metrics["reward"],
                "eos_frac": sum(ended) / len(ended)}

    return run


# -----------------------------------------------------------------------------
# TRL: the same model, prompts and reward through GRPOTrainer


def hf_prompt_tokenizer(vocab_size: int, eos_id: int):
    """trl_peer's stand-in tokenizer (minipost's ids as words t0, t1, ...), split on spaces: the text
    "t12 t7 t301" tokenizes to [12, 7, 301]. TRL tokenizes prompts itself, so they are given as such text."""
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tok_hf = trl_peer.hf_tokenizer(vocab_size, eos_id, eos_id)
    tok_hf.backend_tokenizer.pre_tokenizer = WhitespaceSplit()
    return tok_hf


def ids_as_text(ids: list[int], eos_id: int) -> str:
    return " ".join("<|endoftext|>" if i == eos_id else f"t{i}" for i in ids)


def trl_verifier(tok: Tokenizer):
    """train_grpo.verifier_reward as a TRL reward function: TRL passes each completion's ids (cut after the first
    EOS, which it keeps) and the dataset's other columns (here `instruction`, the raw prompt) as lists."""

    def verifier(prompts, completions, completion_ids, instruction, **kwargs):
        out = []
        for x, ids in zip(instruction, completion_ids):
            ended = bool(ids) and ids[-1] == tok.eos_id
            out.append(train_grpo.verifier_reward(x, tok.decode(ids[:-1] if ended else ids), ended))
        return out

    return verifier


class IterationClock:
    """A TrainerCallback, duck-typed: at the end of every `every`-th optimizer step (one GRPO iteration), the time,
    then `after(k)` (one minipost iteration), then the time again. TRL's iteration k took ends[k] - resumed[k-1]."""

    def __init__(self, every: int):
        self.every, self.ends, self.resumed, self.after = every, [], [], None

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        self.ends.append(time.perf_counter())
        if self.after is not None:
            self.after(len(self.ends) - 1)
        self.resumed.append(time.perf_counter())


def time_method(obj, name: str, seconds: list):
    """Replace obj.name by a wrapper appending each call's seconds to `seconds` (an instance attribute: the
    trainer's own `self.name(...)` calls find it first)."""
    method = getattr(obj, name)

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = method(*a, **k)
        seconds.append(time.perf_counter() - t0)
        return out

    setattr(obj, name, timed)


def trl_trainer(hf, tok, prompts_per_iter: list[list[str]], hp, device, out_dir: str):
    """(trainer, clock, phase seconds lists): GRPOTrainer over the iterations' prompts with minipost's optimizer,
    warmup and reward."""
    import datasets
    import transformers
    import trl

    eos = tok.eos_id
    tok_hf = hf_prompt_tokenizer(tok.vocab_size, eos)
    flat = [x for prompts in prompts_per_iter for x in prompts]
    ds = datasets.Dataset.from_dict({"prompt": [ids_as_text(tok.encode(chat_prompt(x)), eos) for x in flat],
                                     "instruction": flat})
    B = hp.prompts_per_step * hp.group_size
    steps_per_gen = B // hp.minibatch_size
    per_iter = steps_per_gen * hp.epochs  # optimizer steps per GRPO iteration

    cfg = trl.GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=hp.minibatch_size, gradient_accumulation_steps=1,
        steps_per_generation=steps_per_gen, num_iterations=hp.epochs, num_generations=hp.group_size,
        max_completion_length=hp.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=hp.clip,
        loss_type="grpo", scale_rewards="group", shuffle_dataset=False, max_grad_norm=hp.grad_clip or 1e9,
        gradient_checkpointing=False, bf16=False, use_cpu=device.type == "cpu", logging_steps=per_iter,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        seed=hp.seed, max_steps=per_iter * len(prompts_per_iter), remove_unused_columns=False, log_completions=False)
    opt = common.make_optimizer(hf, hp.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, hp.warmup)))
    clock = IterationClock(per_iter)
    trainer = trl.GRPOTrainer(model=hf, reward_funcs=trl_verifier(tok), args=cfg, train_dataset=ds,
                              processing_class=tok_hf, optimizers=(opt, sched), callbacks=[clock])
    trainer.remove_callback(transformers.PrinterCallback)
    got = trainer._tokenize_prompts(ds["prompt"][:4])[0]
    want = [tok.encode(chat_prompt(x)) for x in flat[:4]]
    assert [list(g) for g in got] == want, "TRL's prompt ids differ from minipost's"
    phases = {"generate": [], "generate_and_score": [], "rewards": [], "lengths": [], "max_lengths": [],
              "prompts": []}
    time_method(trainer, "_generate", phases["generate"])
    time_method(trainer, "_generate_and_score_completions", phases["generate_and_score"])
    time_method(trainer, "_calculate_rewards", phases["rewards"])
    rewards_fn = trainer._calculate_rewards

    def recording_rewards(inputs, prompts, completions, completion_ids_list):
        """Also records the mean response length (EOS included) and the prompts (one per group) TRL sampled for."""
        phases["lengths"].append(sum(map(len, completion_ids_list)) / len(completion_ids_list))
        phases["max_lengths"].append(max(map(len, completion_ids_list)))
        phases["prompts"].append([x["instruction"] for x in inputs])
        return rewards_fn(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = recording_rewards
    return trainer, clock, phases


def trl_phases(times: list[float], phases: dict) -> list[dict]:
    """Per TRL iteration: {generation, scoring, score_reward, update, total, length}."""
    out = []
    for k, total in enumerate(times):
        gen, gs, rew = phases["generate"][k], phases["generate_and_score"][k], phases["rewards"][k]
        out.append({"generation": gen, "scoring": gs - gen, "score_reward": rew, "score_logp": gs - gen - rew,
                    "update": total - gs, "total": total, "length": phases["lengths"][k],
                    "max_length": phases["max_lengths"][k]})
    return out


# -----------------------------------------------------------------------------


def build(args, device):
    """Everything both sides need: (hp, tok, policy, ref, hf, prompts per iteration, info)."""
    hp = grpo_settings(args.quick)
    policy, source = load_policy(args.init, device, args.fused_attn)
    tok = Tokenizer(policy.config.vocab_size)
    instructions = load_instructions(tok, hp, policy.config.block_size)
    prompts = iteration_prompts(instructions, hp, args.warmup + args.rounds)
    info = {"source": source, "fused_attn": policy.config.fused_attn, "params": sum(p.numel() for p in policy.parameters()), "prompts_available":
            len(instructions), **{k: getattr(hp, k) for k in ("prompts_per_step", "group_size", "epochs",
                                                               "minibatch_size", "max_new_tokens", "lr", "warmup",
                                                               "clip", "kl_coef", "advantage", "loss_agg",
                                                               "grad_clip")}}
    return hp, tok, policy, prompts, info


def child(args, device):
    """One side's warm-up iteration and one more in this fresh process; reports the peak memory."""
    warnings.filterwarnings("ignore")
    base = benchlib.peak_memory_now(device)
    hp, tok, policy, prompts, _ = build(args, device)
    if args.side == "minipost":
        ref = common.frozen(copy.deepcopy(policy))
        run = minipost_iterator(policy, ref, tok, hp, device, torch.float32)
        gc.collect()
        benchlib.reset_peak_memory(device)
        before = benchlib.peak_memory_now(device)
        for p in prompts[:2]:
            run(p)
    else:
        hf = benchlib.hf_copy(policy, args.hf_attn)
        del policy
        trainer, _, _ = trl_trainer(hf, tok, prompts[:2], hp, device, f"/tmp/minipost_trl_grpo_{os.getpid()}")
        gc.collect()
        benchlib.reset_peak_memory(device)
        before = benchlib.peak_memory_now(device)
        trainer.train()
    peak = benchlib.peak_memory_now(device)
    benchlib.child_report({"base_mib": base, "resident_mib": before, "peak_mib": peak, "delta_mib": peak - before})


PHASES = [("generation", "generation"), ("scoring", "scoring"),
          ("score_reward", "scoring: reward (verifier) + advantages"),
          ("score_logp", "scoring: old log-probs, padding"),
          ("score_ref", "scoring: reference log-probs (minipost only)"),
          ("update", "update (epochs x minibatches)"), ("total", "total per iteration"),
          ("length", "mean response tokens"), ("max_length", "longest response (decode steps)")]


def main(argv=None):
    args = parse_args(argv)
    benchlib.set_threads(args.threads)
    device = common.pick_device(args.device)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.child:
        return child(args, device)
    info = benchlib.machine_info(device)
    trl_mods = trl_peer.import_trl()
    if trl_mods is None:
        return
    import transformers

    transformers.logging.set_verbosity_error()
    info["trl"] = trl_mods[0].__version__
    print(f"GRPO iteration, minipost vs TRL {info['trl']} on {device}: {info['cpu']}, {info['torch_threads']} threads, "
          f"load {info['load_avg_1m']:.1f}", flush=True)
    t_build = time.perf_counter()
    hp, tok, policy, prompts, settings = build(args, device)
    hf = benchlib.hf_copy(policy, args.hf_attn)
    rows8 = [(tok.encode(chat_prompt(x)), 0) for x in prompts[0][:8]]
    settings["fp32_max_logit_diff"] = trl_peer.max_output_diff("sft", policy, hf, rows8, tok.eos_id, tok.eos_id, device)
    settings["hf_attn"] = args.hf_attn
    ref = common.frozen(copy.deepcopy(policy))
    mp_run = minipost_iterator(policy, ref, tok, hp, device, torch.float32)
    trainer, clock, phases = trl_trainer(hf, tok, prompts, hp, device, f"/tmp/minipost_trl_grpo_{os.getpid()}")
    settings["build_s"] = time.perf_counter() - t_build
    print(f"policy: {settings['source']}, {settings['params']:,} parameters; {hp.prompts_per_step} prompts x "
          f"{hp.group_size} samples, <= {hp.max_new_tokens} new tokens, {hp.epochs} epochs of minibatches of "
          f"{hp.minibatch_size}; fp32 logit diff {settings['fp32_max_logit_diff']:.1e}", flush=True)

    # TRL iteration, minipost iteration, TRL iteration, ...: minipost's runs in TRL's callback
    mp = []

    def after(k):  # TRL's iteration k has just ended: minipost's iteration k, and a progress line
        trl_s = clock.ends[k] - (clock.resumed[k - 1] if k else t0)
        mp.append(mp_run(prompts[k]))
        print(f"iteration {k}{' (warm-up)' if k < args.warmup else ''}: TRL {trl_s:.2f} s, minipost "
              f"{mp[-1]['total']:.2f} s", flush=True)

    clock.after = after
    t0 = time.perf_counter()
    trainer.train()
    trl_times = [end - begin for begin, end in zip([t0] + clock.resumed, clock.ends)]
    # the same work: TRL sampled G responses for each of the same prompts, in order, and took S steps per iteration
    assert phases["prompts"] == [[x for x in p for _ in range(hp.group_size)] for p in prompts], "TRL's prompts differ"
    assert trainer.state.global_step == clock.every * len(prompts) and len(trl_times) == len(mp) == len(prompts)
    trl = trl_phases(trl_times, phases)
    per_iter = {"minipost": mp[args.warmup:], "trl": trl[args.warmup:]}
    keys = [k for k, _ in PHASES]
    med = {s: {k: benchlib.median([it[k] for it in its]) for k in keys if k in its[0]} for s, its in per_iter.items()}
    result = {"median_s": med, "per_iteration": per_iter, "warmup_iterations": {"minipost": mp[:args.warmup],
                                                                                "trl": trl[:args.warmup]},
              "speedup": med["trl"]["total"] / med["minipost"]["total"]}
    for phase in ("generation", "scoring", "update"):
        result[f"speedup_{phase}"] = med["trl"][phase] / med["minipost"][phase]
    del trainer, hf, policy, ref
    gc.collect()
    if args.memory == "on":
        for side in ("minipost", "trl"):
            mem = benchlib.measure_in_child("trl_grpo.py", ["--child", "--side", side, "--init", args.init,
                                                            "--hf-attn", args.hf_attn, "--device", str(device)]
                                            + (["--quick"] if args.quick else [])
                                            + (["--fused-attn"] if args.fused_attn else []))
            result[f"peak_mib_{side}"] = mem and mem["delta_mib"]

    print(f"\nseconds per GRPO iteration, median of {args.rounds} alternating rounds (after {args.warmup} warm-up)")
    table = [{"phase": label, "minipost": med["minipost"].get(k), "trl": med["trl"].get(k),
              "ratio": med["trl"][k] / med["minipost"][k] if k in med["trl"] and "length" not in k else None}
             for k, label in PHASES]
    benchlib.print_table(table, [("phase", "phase", "s"), ("minipost", "minipost", ",.3f"), ("trl", "TRL", ",.3f"),
                                 ("ratio", "TRL / minipost", ".2f")])
    met = result["speedup"] >= 2.0
    print(f"speedup {result['speedup']:.2f}x (target >= 2x: {'met' if met else 'NOT met'}); peak MiB minipost "
          f"{result.get('peak_mib_minipost')}, TRL {result.get('peak_mib_trl')}")
    benchlib.write_json(benchlib.out_path(args, "trl_grpo"), {
        "benchmark": "trl_grpo", "quick": args.quick, "machine": info, "settings": settings, "rows": table,
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "side")}, **result})
    return result


if __name__ == "__main__":
    main()
