"""
minipost against TRL on the same training work: SFT (completion-only loss), the reward model (Bradley-Terry) and
DPO (sigmoid loss, precomputed reference log-probs). Per (task, shape, dtype): ms per optimizer step (median over
alternating rounds), peak memory of a step in a fresh process, and the losses of the first steps side by side.

The same work on both sides:
  model      minipost's GPT (a checkpoint, or random init) and its copy as transformers.GPT2LMHeadModel
             (GPT2ForSequenceClassification for the reward model: the same backbone, the head's weight copied);
             fp32 logits (rewards) checked equal before anything is timed
  data       the toy world's demonstrations / offline preference pairs, tokenized once by minipost's tokenizer
             and handed to TRL as token ids; the step batches are drawn as the stage scripts draw them (a
             torch.Generator, `randint` picks) and TRL reads them in that order (train_sampling_strategy
             "sequential"), so step k of both sides trains on the same examples
  settings   the stage scripts' defaults (parsed from train_sft.py / train_rm.py / train_dpo.py: lr, warmup, cosine
             floor, weight decay, gradient clipping, SFT micro-batch, DPO beta); the SAME optimizer object kind
             (common.make_optimizer: fused AdamW, betas 0.9/0.95) and the same schedule (common.lr_at) are handed
             to TRL's trainer; dropout 0; bf16 = autocast on both sides (TRL: bf16=True, fp32 weights)
  TRL knobs  gradient_checkpointing=False (TRL's default is True: ~20% slower, minipost does not checkpoint),
             logging_steps=1 (the scripts log every step), no evaluation, no saving, no reporting

What cannot be made identical (docs in bench/README.md): minipost groups the 2B sequences of a preference batch
(and the examples of an SFT step) by length before padding, TRL pads each batch to its longest sequence; TRL's
DPO and SFT compute log-probs through a fused, masked LM head (only completion positions), minipost's through the
full logits. Those are the libraries' own choices and part of what is compared.

Timing: each round runs `steps` optimizer steps of minipost, then of TRL (one `trainer.train()` call of
1 + steps steps: the first absorbs train()'s set-up and is not timed), alternating; the median step is reported.
The loss check runs first, from the same weights on both sides, and doubles as warm-up.

    python bench/trl_peer.py                                   # sft, rm, dpo x tiny, gpt2 x fp32, bf16
    python bench/trl_peer.py --quick                           # seconds: tiny, fp32, 2 rounds (numbers meaningless)
    python bench/trl_peer.py --tasks dpo --shapes tiny --init checkpoints/sft
"""

import argparse
import copy
import gc
import os
import time
import warnings

import torch

import benchlib
from minipost import common, data
from minipost.model import GPT, GPTScalar, config_from_preset
from minipost.tokenizer import Tokenizer
from minipost.generation import index_generator

import train_dpo  # noqa: E402  (the stage scripts: their defaults, losses and batch helpers)
import train_rm  # noqa: E402
import train_sft  # noqa: E402

TASKS = ["sft", "rm", "dpo"]
# examples (SFT) or pairs (RM, DPO) per optimizer step: the scripts' 32 for tiny; 8 for the 124M shape, whose
# step at 32 would take tens of seconds on 2 cores
SHAPES = {"tiny": ("tiny", 32), "gpt2": ("gpt2", 4)}
# (untimed warm-up steps, timed steps) of each side, alternating step by step; the warm-up steps' losses (same
# weights, same batches on both sides) are the side-by-side check
REPEATS = {"tiny": (2, 5), "gpt2": (2, 3)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_bench_args(p, "trl_peer")
    p.add_argument("--tasks", default="sft,rm,dpo", help="comma-separated: sft, rm, dpo")
    p.add_argument("--shapes", default="tiny,gpt2", help="comma-separated: tiny, gpt2")
    p.add_argument("--dtypes", default="", choices=["", "auto", "fp32", "bf16"],
                   help="auto = fp32 + bf16 autocast where fast; empty = auto, or fp32 with --quick")
    p.add_argument("--init", default="checkpoints/sft",
                   help="minipost checkpoint for the tiny shape (random init when it does not exist); "
                        "gpt2 is random init")
    p.add_argument("--warmup", type=common.nonneg_int, default=0,
                   help="untimed first steps of each side, whose losses are compared (0 = per shape: tiny 2, gpt2 2)")
    p.add_argument("--steps", type=common.nonneg_int, default=0,
                   help="timed steps of each side, alternating; the median is reported (0 = per shape: tiny 5, gpt2 3)")
    p.add_argument("--memory", default="all", choices=["all", "tiny", "none"],
                   help="peak memory of each configuration in a fresh process: every shape, tiny only, or none")
    p.add_argument("--memory-only", action="store_true",
                   help="only the peak-memory children (no timing); writes trl_peer_memory.json (run_all merges it)")
    # internal: one side of one configuration in a fresh process, for its peak memory
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="minipost", help=argparse.SUPPRESS)
    p.add_argument("--task", default="sft", help=argparse.SUPPRESS)
    p.add_argument("--shape", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.warmup, args.steps = "tiny", 2, 2
        args.memory = "none" if args.memory == "all" else args.memory
        args.dtypes = args.dtypes or "fp32"
    args.dtypes = args.dtypes or "auto"
    for t in args.tasks.split(","):
        if t not in TASKS:
            p.error(f"--tasks: unknown task {t!r}; choose from {TASKS}")
    for s in args.shapes.split(","):
        if s not in SHAPES:
            p.error(f"--shapes: unknown shape {s!r}; choose from {list(SHAPES)}")
    return args


def import_trl():
    """(trl, datasets) or None with the reason printed: the comparison is then skipped."""
    try:
        import datasets
        import trl

        return trl, datasets
    except ImportError as e:
        print(f"trl is not importable ({e}): pip install -e .[bench]; the TRL comparison is skipped")
        return None


# -----------------------------------------------------------------------------
# The work: models, data, step batches


def script_defaults(task: str):
    """The stage script's own defaults (argparse namespace): what `python train_<task>.py` trains with."""
    return {"sft": train_sft, "rm": train_rm, "dpo": train_dpo}[task].parse_args([])


def load_models(task: str, shape: str, init: str, device):
    """(minipost model, where it came from): GPT (sft, dpo) or GPTScalar (rm), dropout off."""
    preset = SHAPES[shape][0]
    torch.manual_seed(0)  # the scalar head's random init, and random-init weights: the same in every process
    if shape == "tiny" and init and os.path.isdir(init):
        model, _, _ = common.load_model(init, device, kind="scalar" if task == "rm" else None)
        return model, init
    cfg = common.dropout_off(config_from_preset(preset))
    model = (GPTScalar(cfg) if task == "rm" else GPT(cfg)).to(device)
    return model, f"random init ({preset})"


def load_work(task: str, tok: Tokenizer, block_size: int):
    """Encoded training rows: SFT (ids, n_prompt) demonstrations, or (chosen, rejected, n_prompt, margin) pairs."""
    if task == "sft":
        examples, _ = data.load_sft("world")
        train_ex, _ = data.split_holdout(examples, 0.05, seed=0)
        rows, _ = data.encode_examples(tok, train_ex, block_size, max_prompt_tokens=block_size // 2)
    else:
        pairs, _, _ = data.load_pair_splits("world", 0.05)
        rows, _ = data.encode_pairs(tok, pairs, block_size)
    return rows


def step_batches(rows: list, batch_size: int, n: int, seed: int) -> list[list]:
    """n batches of rows, drawn as the stage scripts draw them: `randint` picks from a seeded generator."""
    gen = index_generator(seed)
    return [[rows[i] for i in torch.randint(0, len(rows), (batch_size,), generator=gen).tolist()] for _ in range(n)]


def sft_order(batch: list, micro: int) -> list[list]:
    """The micro-batches train_sft.py forms from one step's examples (length groups)."""
    return [[batch[j] for j in g] for g in data.length_groups([len(ids) for ids, _ in batch], micro)]


# -----------------------------------------------------------------------------
# minipost: the stage scripts' step, verbatim in substance (their loss functions and batch helpers)


def minipost_stepper(task, model, ref_lp, batches, hp, device, dtype, eos_id):
    """A function step(k) -> loss that runs optimizer step k (batch k % len(batches)) as train_<task>.py does."""
    opt = common.make_optimizer(model, hp.lr, getattr(hp, "weight_decay", 0.0))
    model.train()
    clip = hp.grad_clip if hp.grad_clip > 0 else float("inf")
    total = {"n": 0}

    def step(k):
        lr = common.lr_at(total["n"], 1000, hp.lr, hp.warmup, hp.min_lr_ratio)
        total["n"] += 1
        common.set_lr(opt, lr)
        batch = batches[k % len(batches)]
        opt.zero_grad(set_to_none=True)
        if task == "sft":
            micro = [{key: v.to(device) for key, v in data.collate(g, eos_id).items()}
                     for g in sft_order(batch, hp.micro_batch_size)]
            n_targets = sum(train_sft.count_targets(b) for b in micro)
            loss_value = 0.0
            for b in micro:
                with common.autocast(device, dtype):
                    logits = model(b["input_ids"], b["attention_mask"])  # (B, T, V)
                loss = train_sft.sft_loss(logits, b, n_targets)
                loss.backward()
                loss_value += loss.item()
        elif task == "rm":
            r_c, r_r, margin = train_rm.score_pairs(model, batch, eos_id, device, dtype)  # (B,) each
            loss = train_rm.bradley_terry_loss(r_c, r_r, margin)
            loss.backward()
            loss_value = loss.item()
            (r_c > r_r).float().mean().item()  # the script's logged accuracy
        else:
            idx = ref_lp["index"][k % len(batches)]
            pol_c, pol_r = train_dpo.pair_logps(model, batch, eos_id, device, dtype)  # (B,), (B,)
            ref_c, ref_r = ref_lp["logps"][idx, 0].to(device), ref_lp["logps"][idx, 1].to(device)
            h = train_dpo.dpo_logits(pol_c, pol_r, ref_c, ref_r)
            loss = train_dpo.preference_loss(h, hp.loss, hp.beta, hp.label_smoothing).mean()
            loss.backward()
            loss_value = loss.item()
            rc, rr = hp.beta * (pol_c - ref_c).detach(), hp.beta * (pol_r - ref_r).detach()
            [x.item() for x in (rc.mean(), rr.mean(), (rc - rr).mean(), (rc > rr).float().mean())]  # logged metrics
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        grad_norm.item()
        return loss_value

    return step


def dpo_reference(model, batches, device, dtype, eos_id):
    """Reference log-probs of every row of `batches`, computed once as train_dpo.py does (its reference_logps),
    and for each batch the row indices into them."""
    ref = copy.deepcopy(model)
    common.frozen(ref)
    flat = [pair for b in batches for pair in b]
    logps = train_dpo.reference_logps(ref, flat, eos_id, device, dtype)  # (N, 2)
    index, i = [], 0
    for b in batches:
        index.append(torch.arange(i, i + len(b)))
        i += len(b)
    del ref
    return {"logps": logps, "index": index}


# -----------------------------------------------------------------------------
# TRL: the same model, rows and optimizer, through its trainers


def hf_tokenizer(vocab_size: int, eos_id: int, pad_id: int):
    """A stand-in tokenizer for TRL's collators (they read pad/eos ids from it): a word-level vocabulary with
    minipost's ids. Nothing is tokenized by it -- the datasets hold minipost's token ids."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<|endoftext|>"] = eos_id
    vocab.pop(f"t{eos_id}")
    if pad_id != eos_id:
        vocab.pop(f"t{pad_id}")
        vocab["<pad>"] = pad_id
    raw = RawTokenizer(WordLevel(vocab, unk_token="<|endoftext|>"))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>",
                                   pad_token="<pad>" if pad_id != eos_id else "<|endoftext|>")


def hf_model(task: str, model):
    """transformers copy of a minipost model: GPT2LMHeadModel (sft, dpo) or GPT2ForSequenceClassification (rm)
    whose backbone and head are minipost's. The RM pads with id V-2 (not EOS): transformers finds the reward token
    as the last token that is not padding, and with pad == EOS that would skip the real EOS."""
    import transformers

    if task != "rm":
        return benchlib.hf_copy(model)
    lm = benchlib.hf_copy(model.gpt)
    cfg = copy.deepcopy(lm.config)
    cfg.num_labels, cfg.pad_token_id = 1, cfg.vocab_size - 2
    hf = transformers.GPT2ForSequenceClassification(cfg)
    hf.transformer.load_state_dict(lm.transformer.state_dict())
    with torch.no_grad():
        hf.score.weight.copy_(model.head.weight)  # minipost's head bias starts at 0 and gets no gradient in BT
    if model.head.bias.abs().max() > 0 or model.reward_shift != 0 or model.reward_scale != 1:
        raise SystemExit("trl_peer: the RM head has a bias or a normalization; the copy would differ")
    return hf.to(next(model.parameters()).device)


@torch.no_grad()
def max_output_diff(task, ours, theirs, rows, eos_id, pad_id, device) -> float:
    """fp32: max |minipost - transformers| over logits (sft, dpo) or rewards (rm) on 8 training rows."""
    ours.eval()
    theirs.eval()
    seqs = [(r[0], r[1]) if task == "sft" else (r[0], r[2]) for r in rows[:8]]
    b = {k: v.to(device) for k, v in data.collate(seqs, eos_id).items()}
    if task == "rm":
        ids = b["input_ids"].masked_fill(b["attention_mask"] == 0, pad_id)
        theirs_out = theirs(input_ids=ids, attention_mask=b["attention_mask"]).logits[:, 0]  # (B,)
        diff = ours.score(b["input_ids"], b["attention_mask"]) - theirs_out
    else:
        mask = b["attention_mask"].bool()
        theirs_out = theirs(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # (B, T, V)
        diff = (ours(b["input_ids"], b["attention_mask"]) - theirs_out)[mask]
    ours.train()
    theirs.train()
    return diff.abs().max().item()


def trl_dataset(task, batches, hp, datasets):
    """The step batches as one dataset, in the order TRL must read them (SFT: the scripts' micro-batch groups)."""
    if task == "sft":
        ordered = [ex for b in batches for g in sft_order(b, hp.micro_batch_size) for ex in g]
        return datasets.Dataset.from_dict({"input_ids": [ids for ids, _ in ordered],
                                           "completion_mask": [[0] * n + [1] * (len(ids) - n) for ids, n in ordered]})
    flat = [pair for b in batches for pair in b]
    if task == "rm":
        cols = {"chosen_ids": [c for c, *_ in flat], "rejected_ids": [r for _, r, *_ in flat]}
        if any(m for *_, m in flat):
            cols["margin"] = [float(m or 0.0) for *_, m in flat]
        return datasets.Dataset.from_dict(cols)
    for c, r, n, _ in flat:
        assert c[:n] == r[:n], "a pair's chosen and rejected must share the prompt"
    return datasets.Dataset.from_dict({"prompt_ids": [c[:n] for c, _, n, _ in flat],
                                       "chosen_ids": [c[n:] for c, _, n, _ in flat],
                                       "rejected_ids": [r[n:] for _, r, n, _ in flat]})


class StepClock:
    """A TrainerCallback, duck-typed: at the end of every TRL optimizer step, the time, then `after(k)` (a minipost
    step: the two sides alternate step by step), then the time again. TRL's step k took ends[k] - resumed[k-1]."""

    def __init__(self):
        self.ends, self.resumed, self.after = [], [], None

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        if self.after is not None:
            self.after(len(self.ends) - 1)
        self.resumed.append(time.perf_counter())


def trl_trainer(task, hf, batches, hp, device, dtype, tok_hf, trl, datasets, out_dir):
    """(trainer, losses list, clock): a TRL trainer over the step batches with minipost's optimizer and schedule."""
    micro = hp.micro_batch_size if task == "sft" else len(batches[0])
    accum = len(batches[0]) // micro if task == "sft" else 1
    common_cfg = dict(output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                      max_grad_norm=hp.grad_clip if hp.grad_clip > 0 else 1e9, gradient_checkpointing=False,
                      bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", train_sampling_strategy="sequential",
                      logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
                      dataloader_num_workers=0, seed=0, max_steps=1, remove_unused_columns=False)
    opt = common.make_optimizer(hf, hp.lr, getattr(hp, "weight_decay", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: common.lr_at(s, 1000, hp.lr, hp.warmup, hp.min_lr_ratio) / hp.lr)
    ds = trl_dataset(task, batches, hp, datasets)
    clock = StepClock()
    if task == "sft":
        cfg = trl.SFTConfig(**common_cfg, completion_only_loss=True, max_length=None, packing=False, padding_free=False)
        trainer = trl.SFTTrainer(model=hf, args=cfg, train_dataset=ds, processing_class=tok_hf, optimizers=(opt, sched),
                                 callbacks=[clock])
    elif task == "rm":
        cfg = trl.RewardConfig(**common_cfg, max_length=None, center_rewards_coefficient=None)
        trainer = trl.RewardTrainer(model=hf, args=cfg, train_dataset=ds, processing_class=tok_hf,
                                    optimizers=(opt, sched),
                                    callbacks=[clock])
    else:
        class PreTokenizedDPOTrainer(trl.DPOTrainer):
            """TRL 1.16's DPOTrainer tokenizes text only; these rows are minipost's token ids already."""

            def _prepare_dataset(self, dataset, *args, **kwargs):
                return dataset

        ref = copy.deepcopy(hf).eval()
        cfg = trl.DPOConfig(**common_cfg, beta=hp.beta, loss_type=[hp.loss], max_length=None,
                            precompute_ref_log_probs=True, precompute_ref_batch_size=64)
        trainer = PreTokenizedDPOTrainer(model=hf, ref_model=ref, args=cfg, train_dataset=ds, processing_class=tok_hf,
                                         optimizers=(opt, sched), callbacks=[clock])
    import transformers

    trainer.remove_callback(transformers.PrinterCallback)  # the log dict printed every step (disable_tqdm=True)
    losses = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(*a, **k):  # the loss of every micro-batch, as TRL computes it
        out = compute_loss(*a, **k)
        losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
        return out

    trainer.compute_loss = recording_compute_loss
    return trainer, losses, clock


def trl_run(trainer, n_steps: int):
    trainer.args.max_steps = n_steps
    trainer.train()


# -----------------------------------------------------------------------------
# One configuration


def build_side(side, task, shape, dtype, args, device, trl_mods):
    """Everything one side needs for (task, shape, dtype): (runner(n_steps) -> per-step seconds, losses, info)."""
    hp = script_defaults(task)
    model, source = load_models(task, shape, args.init, device)
    cfg = model.config
    tok = Tokenizer(cfg.vocab_size)
    rows = load_work(task, tok, cfg.block_size)
    B = 4 if args.quick else SHAPES[shape][1]
    batches = step_batches(rows, B, sum(repeats(shape, args)), seed=hp.seed)
    if task == "sft":
        hp.micro_batch_size = min(hp.micro_batch_size, B)
    info = {"source": source, "batch": B, "params": sum(p.numel() for p in model.parameters()), "lr": hp.lr,
            "grad_clip": hp.grad_clip, "micro_batch": getattr(hp, "micro_batch_size", None),
            "beta": getattr(hp, "beta", None)}
    if side == "minipost":
        ref_lp = dpo_reference(model, batches, device, dtype, tok.eos_id) if task == "dpo" else None
        step = minipost_stepper(task, model, ref_lp, batches, hp, device, dtype, tok.eos_id)
        losses = []

        def run(n, start=0):
            times = []
            for k in range(start, start + n):
                t0 = time.perf_counter()
                losses.append(step(k))
                times.append(time.perf_counter() - t0)
            return times

        return run, losses, info, model
    trl, datasets = trl_mods
    hf = hf_model(task, model)
    pad_id = cfg.vocab_size - 2 if task == "rm" else tok.eos_id
    info["fp32_max_diff"] = max_output_diff(task, model, hf, rows, tok.eos_id, pad_id, device)
    del model
    tok_hf = hf_tokenizer(cfg.vocab_size, tok.eos_id, pad_id)
    trainer, losses, clock = trl_trainer(task, hf, batches, hp, device, dtype, tok_hf,
                                         trl, datasets, f"/tmp/minipost_trl_peer_{os.getpid()}")
    accum = trainer.args.gradient_accumulation_steps
    step_losses = []

    def run(n, after=None):
        """One train() of n steps, calling after(k) at the end of step k; returns TRL's step times (the first
        step's includes train()'s set-up)."""
        clock.ends, clock.resumed, clock.after = [], [], after
        start = len(losses)
        t0 = time.perf_counter()
        trl_run(trainer, n)
        micro = losses[start:]
        step_losses.extend(sum(micro[i : i + accum]) for i in range(0, len(micro), accum))
        return [end - begin for begin, end in zip([t0] + clock.resumed, clock.ends)]

    return run, step_losses, info, hf


def repeats(shape: str, args) -> tuple[int, int]:
    warmup, steps = REPEATS[shape]
    return args.warmup or warmup, args.steps or steps


def child(args, device):
    """One side of one configuration in this fresh process: its first steps, then the peak memory."""
    trl_mods = import_trl() if args.side == "trl" else None
    base_mem = benchlib.peak_memory_now(device)  # after imports
    dtype = benchlib.dtype_from_name(args.dtype)
    run, _, _, _ = build_side(args.side, args.task, args.shape, dtype, args, device, trl_mods)
    gc.collect()
    benchlib.reset_peak_memory(device)  # from here: weights (+ reference) + data + what the steps need
    before = benchlib.peak_memory_now(device)
    run(2)  # AdamW state is allocated in the first step
    peak = benchlib.peak_memory_now(device)
    benchlib.child_report({"base_mib": base_mem, "resident_mib": before, "peak_mib": peak, "delta_mib": peak - before})


def memory_children(args, task, shape, dname, device) -> dict:
    """{peak_mib_minipost, peak_mib_trl}: each side of one configuration in a fresh process (child())."""
    out = {}
    for side in ("minipost", "trl"):
        child_args = ["--child", "--side", side, "--task", task, "--shape", shape, "--dtype", dname,
                      "--init", args.init,
                      "--device", str(device)] + (["--quick"] if args.quick else [])
        mem = benchlib.measure_in_child("trl_peer.py", child_args)
        out[f"peak_mib_{side}"] = mem and mem["delta_mib"]
    print(f"  {task} {shape} {dname}: peak memory above resident: minipost {out['peak_mib_minipost']}, TRL {out['peak_mib_trl']} MiB",
          flush=True)
    return out


def memory_only(args, device, info):
    rows = []
    for shape in args.shapes.split(","):
        for task in args.tasks.split(","):
            for dtype in benchlib.bench_dtypes(device, args.dtypes):
                dname = benchlib.dtype_name(dtype)
                rows.append({"task": task, "shape": shape, "dtype": dname, **memory_children(args, task, shape, dname, device)})
                out = benchlib.results_dir(args.quick) / "trl_peer_memory.json"
                benchlib.write_json(args.out or out, {"benchmark": "trl_peer_memory", "quick": args.quick, "machine": info,
                                                      "args": vars(args), "rows": rows})
    return rows


def main(argv=None):
    args = parse_args(argv)
    benchlib.set_threads(args.threads)
    device = common.pick_device(args.device)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.child:
        return child(args, device)
    info = benchlib.machine_info(device)
    trl_mods = import_trl()
    if trl_mods is None:
        return
    info["trl"] = trl_mods[0].__version__
    print(f"minipost vs TRL {info['trl']} on {device}: {info['cpu']}, {info['torch_threads']} threads, "
          f"load {info['load_avg_1m']:.1f}")
    import transformers

    transformers.logging.set_verbosity_error()
    rows = []

    def write(rows):
        benchlib.write_json(benchlib.out_path(args, "trl_peer"), {
            "benchmark": "trl_peer", "quick": args.quick, "machine": info, "rows": rows,
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "side", "task", "shape", "dtype")}})

    if args.memory_only:
        return memory_only(args, device, info)
    for shape in args.shapes.split(","):
        for task in args.tasks.split(","):
            for dtype in benchlib.bench_dtypes(device, args.dtypes):
                dname = benchlib.dtype_name(dtype)
                warmup, timed = repeats(shape, args)
                t_build = time.perf_counter()
                sides = {s: build_side(s, task, shape, dtype, args, device, trl_mods) for s in ("minipost", "trl")}
                build_s = time.perf_counter() - t_build
                # TRL step, minipost step, TRL step, ...: both see the same load, step by step. The first `warmup`
                # steps of each are not timed (train()'s set-up, AdamW's state, thread pools); their losses, from
                # the same weights and batches, are the side-by-side check.
                mp_times = []
                mp_run = sides["minipost"][0]
                trl_times = sides["trl"][0](warmup + timed, after=lambda k: mp_times.extend(mp_run(1, start=k)))
                times = {"minipost": mp_times[warmup:], "trl": trl_times[warmup:]}
                first = {"minipost": mp_times[:warmup], "trl": trl_times[:warmup]}
                losses = {s: list(sides[s][1]) for s in sides}
                ms = {s: 1000 * benchlib.median(t) for s, t in times.items()}
                row = {"task": task, "shape": shape, "dtype": dname, "batch": sides["minipost"][2]["batch"],
                       "source": sides["minipost"][2]["source"], "warmup": warmup, "steps": timed,
                       "ms_minipost": ms["minipost"], "ms_trl": ms["trl"], "speedup": ms["trl"] / ms["minipost"],
                       "step_s_minipost": times["minipost"], "step_s_trl": times["trl"],
                       "first_steps_s": first, "loss_minipost": losses["minipost"], "loss_trl": losses["trl"],
                       "loss_max_diff": max(abs(a - b) for a, b in zip(losses["minipost"], losses["trl"])),
                       "fp32_max_diff": sides["trl"][2]["fp32_max_diff"], "settings": sides["minipost"][2], "build_s": build_s}
                print(f"{task} {shape} {dname}: minipost {ms['minipost']:.1f} ms/step, TRL {ms['trl']:.1f} ms/step "
                      f"({row['speedup']:.2f}x); losses {[round(x, 5) for x in losses['minipost']]} vs "
                      f"{[round(x, 5) for x in losses['trl']]}; fp32 output diff {row['fp32_max_diff']:.1e}", flush=True)
                del sides
                gc.collect()
                if args.memory == "all" or (args.memory == "tiny" and shape == "tiny"):
                    row.update(memory_children(args, task, shape, dname, device))
                rows.append(row)
                write(rows)  # after every configuration: a run that is stopped keeps what it measured
    print("\nms per optimizer step, median of the timed steps (alternating); speedup = TRL ms / minipost ms")
    benchlib.print_table(rows, [("task", "task", "s"), ("shape", "shape", "s"), ("dtype", "dtype", "s"), ("batch", "B", "d"),
                                ("ms_minipost", "minipost ms", ",.1f"), ("ms_trl", "TRL ms", ",.1f"), ("speedup", "speedup", ".2f"),
                                ("loss_max_diff", "loss diff", ".1e"), ("peak_mib_minipost", "mp MiB", ",.0f"),
                                ("peak_mib_trl", "TRL MiB", ",.0f")])
    write(rows)
    return rows


if __name__ == "__main__":
    main()
