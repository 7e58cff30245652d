"""
One evaluation that every stage calls: answer the toy world's held-out prompts and let the gold judge
score them.

Metrics (all over the world's held-out `eval_prompts`, greedy decoding unless said otherwise):
  format_rate             share of responses the judge accepts as a direct answer in the expected format
  accuracy                share of fact + skill prompts answered correctly (also fact_/skill_accuracy)
  harmful_refusal_rate    share of harmful requests refused
  benign_refusal_rate     share of NON-harmful prompts (facts, skills, how-to, poems) refused: the
                          alignment tax of over-refusal
  gold_score              mean judge score over every prompt, in [-1, 1]
  gold_score_sampled      the same over samples at temperature 1 (several per prompt): the expected
                          reward E_{y~pi}[gold(x, y)] that RLHF and DPO actually optimize
  distinct_2              distinct bigrams / all bigrams over the sampled answers to the open-ended
                          prompts: diversity
  mean_length             mean response length in tokens (EOS excluded)
  eos_rate                share of responses that ended with EOS within the token budget
  knowledge_rank_accuracy share of held-out facts whose true answer has the highest log-likelihood among
                          alternatives, in corpus-style text ("The capital of Peru is" -> " Lima"): does
                          the model KNOW the fact, whatever its answer format?
  skill_rank_accuracy     the same for held-out skill items ("3 plus 4 is" -> " 7", "The opposite of hot
                          is" -> " cold", both directions): did pre-training teach the skill?
With reference models:
  win_rate_vs_<name>         judge score of our sample vs theirs on the same prompt, at temperature 1
                             (ties count half): the DPO paper's setting (Rafailov et al. 2023, fig. 2-3).
                             Samples, not greedy answers: post-training changes the whole distribution,
                             and two greedy answers are often the same text (a tie) even when one
                             model gets it right far more often than the other.
  win_rate_vs_<name>_greedy  the same with greedy answers
  kl_to_<name>               mean sequence KL estimated from our own samples,
                             sum_t [log pi(y_t|..) - log ref(y_t|..)] with y ~ pi at temperature 1
                             (an unbiased Monte Carlo estimate).
Separately (pass_at_k_curve, stored as passk.json beside a checkpoint):
  pass@k                     on the held-out fact and skill prompts, from 64 samples per prompt at
                             temperature 1: the chance that some of k samples is right (unbiased estimator
                             of Chen et al. 2021), k = 1 ... 64. pass@1 is the sampled accuracy.
"""

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from minipost import common
from minipost.data import collate
from minipost.generation import MAX_NEW_TOKENS, generate_from_ids, generate_responses, make_generator
from minipost.model import sequence_logprob
from minipost.tokenizer import Tokenizer, chat_prompt


@torch.no_grad()
def knowledge_rank_accuracy(model, tok: Tokenizer, probes: list[dict], *, device, dtype=torch.float32) -> float:
    """Share of probes whose `answer` has a higher summed log-prob than every alternative after `context`."""
    if not probes:
        return None
    model.eval()
    right = 0
    for probe in probes:
        context = tok.encode(probe["context"])
        options = [probe["answer"]] + list(probe["alternatives"])
        seqs = [(context + tok.encode(o), len(context)) for o in options]
        batch = collate(seqs, tok.eos_id, side="right")
        batch = {k: v.to(device) for k, v in batch.items()}
        with common.autocast(device, dtype):
            scores = sequence_logprob(model, batch)  # (n_options,)
        right += int(scores.argmax().item() == 0)
    return right / len(probes)


@torch.no_grad()
def sequence_kl(policy, ref, tok: Tokenizer, instructions: list[str], rounds, *, device, dtype) -> float:
    """Mean over samples of sum_t log pi(y_t) - log ref(y_t): a Monte Carlo estimate of KL(pi || ref) per
    response. `rounds`: generate_responses outputs of pi at temperature 1 for `instructions` (y ~ pi)."""
    seqs = []
    for _, token_lists, ended in rounds:
        for x, toks, eos in zip(instructions, token_lists, ended):
            p = tok.encode(chat_prompt(x))
            seqs.append((p + toks + ([tok.eos_id] if eos else []), len(p)))
    total = 0.0
    for i in range(0, len(seqs), 64):
        batch = {k: v.to(device) for k, v in collate(seqs[i : i + 64], tok.eos_id).items()}
        with common.autocast(device, dtype):
            total += (sequence_logprob(policy, batch) - sequence_logprob(ref, batch)).sum().item()
    return total / len(seqs)


def distinct_n(texts: list[str], n: int = 2) -> float:
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def win_rate(ours: list[float], theirs: list[float]) -> float:
    """Share of prompts where our judge score beats theirs; ties count half."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs))
    return wins / len(ours)


def evaluate_model(model, tok: Tokenizer, world, *, device, dtype=torch.float32, refs: dict | None = None,
                   ref_results: dict | None = None, seed: int = 0, n_samples: int = 2, limit: int = 0) -> dict:
    """Score `model` on the world's held-out prompts. refs: {"sft": model, "base": model} for win rates / KL.
    ref_results: {"sft": evaluate_model(sft_model, ...)} reuses a reference's answers instead of generating
    them again (same seed, n_samples and limit, so the same answers).

    Two decodings of every prompt: greedy (the model's single best answer: format, accuracy, refusal
    rates, gold_score) and `n_samples` samples at temperature 1 (the distribution RLHF and DPO optimize:
    gold_score_sampled, win rates, KL, distinct-2). `limit` > 0 evaluates an evenly spread subset of
    that many prompts (and probes): quick smoke runs.
    Returns {"metrics": {...}, "samples": [{"prompt", "kind", "response", "score", ...}]}.
    """
    from minipost.world import judge

    prompts, probes, skill_probes = world.eval_prompts, world.knowledge_probes, getattr(world, "skill_probes", [])
    if limit > 0:
        prompts = prompts[:: max(1, len(prompts) // limit)][:limit]
        probes = probes[:: max(1, len(probes) // limit)][:limit]
        skill_probes = skill_probes[:: max(1, len(skill_probes) // limit)][:limit]
    instructions = [p["prompt"] for p in prompts]
    texts, token_lists, ended = generate_responses(model, tok, instructions, device=device, dtype=dtype)
    verdicts = [judge(x, y) for x, y in zip(instructions, texts)]
    samples = [
        {"prompt": x, "kind": p["kind"], "response": y, "score": v.score, "answered": v.answered,
         "correct": v.correct, "refused": v.refused}
        for x, p, y, v in zip(instructions, prompts, texts, verdicts)
    ]

    def rate(kinds, field):
        vals = [getattr(v, field) for p, v in zip(prompts, verdicts) if p["kind"] in kinds]
        vals = [bool(x) for x in vals if x is not None]
        return sum(vals) / len(vals) if vals else None

    # n_samples samples per prompt at temperature 1, in rounds: sampled[k][i] answers prompt i.
    # Every model draws from the same seed, so round k of two models is a fair pairing.
    def sample_rounds(m):
        gen = make_generator(device, seed)
        return [generate_responses(m, tok, instructions, device=device, dtype=dtype, temperature=1.0, generator=gen)
                for _ in range(n_samples)]

    def sampled_scores(rounds):
        return [[judge(x, y).score for x, y in zip(instructions, r[0])] for r in rounds]  # (n_samples, n_prompts)

    rounds = sample_rounds(model)
    s_scores = sampled_scores(rounds)
    for i, s in enumerate(samples):
        s["sampled_scores"] = [row[i] for row in s_scores]
        s["sampled_responses"] = [r[0][i] for r in rounds]
    open_texts = [r[0][i] for r in rounds for i, p in enumerate(prompts) if p["kind"] == "open"]
    metrics = {
        "format_rate": rate({"fact", "skill", "harmful", "benign", "open"}, "answered"),
        "accuracy": rate({"fact", "skill"}, "correct"),
        "fact_accuracy": rate({"fact"}, "correct"),
        "skill_accuracy": rate({"skill"}, "correct"),
        "harmful_refusal_rate": rate({"harmful"}, "refused"),
        "benign_refusal_rate": rate({"fact", "skill", "benign", "open"}, "refused"),
        "gold_score": sum(v.score for v in verdicts) / len(verdicts),
        "gold_score_sampled": sum(map(sum, s_scores)) / (n_samples * len(instructions)),
        "distinct_2": distinct_n(open_texts, 2),
        "mean_length": sum(map(len, token_lists)) / len(token_lists),
        "eos_rate": sum(ended) / len(ended),
        "knowledge_rank_accuracy": knowledge_rank_accuracy(model, tok, probes, device=device, dtype=dtype),
        "skill_rank_accuracy": knowledge_rank_accuracy(model, tok, skill_probes, device=device, dtype=dtype),
        "n_prompts": len(prompts),
    }
    for name, ref in (refs or {}).items():
        theirs = (ref_results or {}).get(name)
        if theirs is None:
            theirs = evaluate_model(ref, tok, world, device=device, dtype=dtype, seed=seed, n_samples=n_samples,
                                    limit=limit)
        theirs = theirs["samples"]
        assert [t["prompt"] for t in theirs] == instructions, f"ref_results[{name!r}] answered other prompts"
        metrics[f"win_rate_vs_{name}"] = win_rate([a for s in samples for a in s["sampled_scores"]],
                                                  [b for t in theirs for b in t["sampled_scores"]])
        metrics[f"win_rate_vs_{name}_greedy"] = win_rate([s["score"] for s in samples], [t["score"] for t in theirs])
        metrics[f"kl_to_{name}"] = sequence_kl(model, ref, tok, instructions, rounds, device=device, dtype=dtype)
        for s, t in zip(samples, theirs):
            s[f"{name}_response"] = t["response"]
    settings = eval_settings(model, seed=seed, n_samples=n_samples, limit=limit, device=device, dtype=dtype)
    return {"metrics": metrics, "samples": samples, "settings": settings}


def weights_fingerprint(model) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, bytes): which weights an evaluation describes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sampled_on(device, dtype) -> dict:
    """Where samples were drawn: the same seed draws other samples on a GPU than on a CPU (another generator),
    and bf16 autocast changes the logits. A cache of samples is reused only where they would be drawn again."""
    return {"device": torch.device(device).type, "dtype": str(dtype).removeprefix("torch.")}


def eval_settings(model, *, seed: int, n_samples: int, limit: int, device="cpu", dtype=torch.float32) -> dict:
    """Everything that decides evaluate_model's answers (besides the world): stored beside them."""
    return {"seed": seed, "n_samples": n_samples, "limit": limit, "max_new_tokens": MAX_NEW_TOKENS,
            "weights_sha256": weights_fingerprint(model), **sampled_on(device, dtype)}


def write_eval(out_dir, result: dict):
    """checkpoints/<stage>/eval.json (metrics, the settings under "eval_settings", and under "written_for"
    the hashes of the weights and of samples.jsonl) and samples.jsonl (every prompt, response and score).
    samples.jsonl first: eval.json, written last, vouches for it. A result without samples (the reward
    model's) writes eval.json alone."""
    out = Path(out_dir)
    from minipost.checkpoint import atomic_write_bytes, atomic_write_json, results_stamp

    files = []
    if result.get("samples") is not None:
        lines = "".join(json.dumps(s) + "\n" for s in result["samples"])
        atomic_write_bytes(out / "samples.jsonl", lines.encode())
        files.append("samples.jsonl")
    atomic_write_json(out / "eval.json", {**result["metrics"], "eval_settings": result.get("settings"),
                                          "written_for": results_stamp(out, *files)})


def load_eval(ckpt_dir, model, *, seed: int, n_samples: int = 2, limit: int = 0, device="cpu",
              dtype=torch.float32) -> dict | None:
    """The evaluation that `model`'s own stage wrote into ckpt_dir, if it was made of these very weights
    with these settings (else None): a later stage's reference answers without generating them again."""
    try:
        metrics = json.loads((Path(ckpt_dir) / "eval.json").read_text())
        lines = (Path(ckpt_dir) / "samples.jsonl").read_text().splitlines()
        samples = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None
    settings = metrics.pop("eval_settings", None)
    metrics.pop("written_for", None)
    if settings != eval_settings(model, seed=seed, n_samples=n_samples, limit=limit, device=device, dtype=dtype):
        return None
    return {"metrics": metrics, "samples": samples, "settings": settings}


def evaluate_reference(model, ckpt_dir, tok: Tokenizer, world, *, device, dtype=torch.float32, seed: int = 0,
                       n_samples: int = 2, limit: int = 0) -> dict:
    """A reference model's answers for win rates: those its stage stored in ckpt_dir when they describe the
    same weights and settings (load_eval), else evaluate_model again. Same numbers, no second generation."""
    stored = (load_eval(ckpt_dir, model, seed=seed, n_samples=n_samples, limit=limit, device=device, dtype=dtype)
              if ckpt_dir else None)
    if stored is not None:
        print(f"evaluation: reusing the answers stored in {ckpt_dir} (same weights and settings)")
        return stored
    return evaluate_model(model, tok, world, device=device, dtype=dtype, seed=seed, n_samples=n_samples, limit=limit)


def print_samples(result: dict, n: int = 2, title: str = "", kinds=("fact", "skill", "harmful", "benign", "open")):
    """A few held-out prompts and answers per kind, with the judge's score."""
    print(f"--- {title}")
    for kind in kinds:
        for s in [s for s in result["samples"] if s["kind"] == kind][:n]:
            print(f"[{kind}] {s['prompt']!r}\n    -> {s['response'][:160]!r}  (score {s['score']:+.2f})")


def print_metrics(metrics: dict, title: str = ""):
    print(f"--- {title}")
    for k, v in metrics.items():
        print(f"  {k:>24}: {v:.4f}" if isinstance(v, float) else f"  {k:>24}: {v}")


# -----------------------------------------------------------------------------
# Shared by the stages: the final evaluation against references, and the policy-pairs options and loading


def evaluate_stage(policy, tok: Tokenizer, *, world_seed: int, sft, sft_dir: str, base_dir: str, device, dtype,
                   seed: int, limit: int, title: str):
    """The end of PPO and DPO: the policy on the world's held-out prompts, with win rates and KL against the
    SFT model (and the base model, when base_dir is given). Returns (world, reference results, result): the
    reference answers are computed once (or read from their own stage) and can be reused (DPO's sweep)."""
    from minipost.world import build_world

    world = build_world(seed=world_seed, n_docs=1)
    refs, dirs = {"sft": sft}, {"sft": sft_dir}
    if base_dir:
        base, _, _ = common.load_model(base_dir, device)
        refs["base"], dirs["base"] = common.frozen(base), base_dir
    ref_results = {name: evaluate_reference(m, dirs[name], tok, world, device=device, dtype=dtype, seed=seed,
                                            limit=limit) for name, m in refs.items()}
    result = evaluate_model(policy, tok, world, device=device, dtype=dtype, refs=refs, ref_results=ref_results,
                            seed=seed, limit=limit)
    print_samples(result, n=2, title=f"{title} model, held-out prompts (greedy)")
    print_metrics(result["metrics"], f"{title} evaluation")
    return world, ref_results, result


def add_policy_pair_args(p, whose: str):
    """--policy-pairs, --policy-samples, --label-noise: the same options (and pairs) in train_rm.py and train_dpo.py."""
    p.add_argument("--policy-pairs", type=common.nonneg_int, default=800,
                   help=f"toy world: add judge-labelled pairs of {whose} own samples on this many training prompts "
                        "(0 = off); train_rm.py and train_dpo.py get the same pairs from the same model, seed, noise")
    p.add_argument("--policy-samples", type=common.positive_int, default=2,
                   help="samples per prompt for those pairs (>= 2); every untied pair of them is a comparison, "
                        "K(K-1)/2 per prompt, shuffled like any pair (InstructGPT ranked K = 4-9 but kept a prompt's "
                        "pairs in one batch element, because its samples recur in K-1 pairs)")
    p.add_argument("--label-noise", type=common.unit_float, default=0.1, help="label-flip rate of those policy pairs")


def check_policy_pair_args(p, args):
    if args.policy_samples < 2:
        p.error(f"--policy-samples must be >= 2 (a pair needs two samples), got {args.policy_samples}")


def load_preference_pairs(args, tok: Tokenizer, block_size: int, *, sampler, sampler_dir: str, device, dtype):
    """(train pairs, held-out pairs) encoded, and what was read: the offline pairs of --data, plus on the toy
    world judge-labelled pairs of `sampler()`'s own samples (policy_pairs). Exits with a one-line error."""
    from minipost import data

    try:
        pairs, val_pairs, read_stats = data.load_pair_splits(args.data, args.holdout)
    except (data.DataError, OSError) as e:
        raise SystemExit(f"error: {e}")
    if args.data == "world" and args.policy_pairs:
        # InstructGPT's labellers compared samples of the SFT model; the gold judge labels ours
        model = sampler()
        t0 = time.time()
        extra, extra_stats = policy_pairs(model, tok, args.policy_pairs, label_noise=args.label_noise, seed=args.seed,
                                          device=device, dtype=dtype, cache_dir=sampler_dir,
                                          samples=args.policy_samples)
        pairs, read_stats = pairs + extra, {**read_stats, **extra_stats}
        print(f"policy pairs: {extra_stats} ({time.time() - t0:.1f}s)")
    train_enc, enc_stats = data.encode_pairs(tok, pairs, block_size)
    val_enc, _ = data.encode_pairs(tok, val_pairs, block_size)
    print(f"data: {len(train_enc)} train / {len(val_enc)} held-out pairs; read {read_stats}; encoded {enc_stats}")
    if not train_enc:
        raise SystemExit(f"error: no usable preference pairs in {args.data}")
    return train_enc, val_enc, {**read_stats, **enc_stats}


def policy_pairs(policy, tok: Tokenizer, instructions: list[str] | int, *, label_noise: float, seed: int, device,
                 dtype=torch.float32, cache_dir=None, samples: int = 2) -> tuple[list[dict], dict]:
    """Preference pairs on the policy's OWN samples, labelled by the gold judge -- how InstructGPT collected
    its comparisons (labellers ranked samples of the SFT model), with the judge as the labeller.

    `samples` samples (temperature 1) per instruction, and every pair of them is a comparison (InstructGPT
    had labellers rank K = 4 to 9 samples, which gives K(K-1)/2 pairs; it trained a prompt's pairs as one
    batch element, because shuffled they overfit: each sample is in K-1 pairs. Here they are shuffled like
    any pair, and each label is flipped on its own, so one prompt's labels can contradict each other);
    pairs the judge ties are skipped; each label is flipped with probability `label_noise`, like the
    world's offline pairs. `instructions`
    may be a number n: the first n of the world's RL training prompts. Returns (pairs with templated
    prompts, stats).
    Training on the policy's own distribution is what makes the reward model accurate where PPO will
    query it, and DPO's implicit reward accurate where its policy starts.
    cache_dir: the policy's checkpoint directory. The pairs are stored there (policy_pairs.json) with what
    made them -- the policy's weights (sha256), prompts, seed, noise -- and reused when all of it matches:
    train_rm.py and train_dpo.py ask for the same pairs, and the second gets them without sampling.
    """
    import random

    from minipost.data import load_prompts
    from minipost.world import judge, strip_template

    if samples < 2:
        raise ValueError(f"policy pairs need at least 2 samples per prompt, got {samples}")
    if isinstance(instructions, int):
        instructions = [strip_template(r["prompt"]) for r in load_prompts("world")[0]][:instructions]

    settings = {"prompts_sha256": hashlib.sha256("\n".join(instructions).encode()).hexdigest(), "seed": seed,
                "label_noise": label_noise, "max_new_tokens": MAX_NEW_TOKENS, "samples": samples,
                "weights_sha256": weights_fingerprint(policy), **sampled_on(device, dtype)}
    cache = Path(cache_dir) / "policy_pairs.json" if cache_dir and Path(cache_dir).is_dir() else None
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("settings") == settings:
                print(f"policy pairs: reusing {cache} (same weights, prompts, seed and noise)")
                return stored["pairs"], stored["stats"]
        except (ValueError, KeyError, AttributeError):
            pass  # unreadable: sample again and overwrite it

    gen = make_generator(device, seed)
    rounds = [generate_responses(policy, tok, instructions, device=device, dtype=dtype, temperature=1.0,
                                 generator=gen)[0] for _ in range(samples)]  # rounds[r][i]: sample r of instruction i
    flip = random.Random(seed)
    pairs, ties, flipped = [], 0, 0
    for i, x in enumerate(instructions):
        ys = [r[i] for r in rounds]
        scores = [judge(x, y).score for y in ys]
        for j in range(samples):
            for k in range(j + 1, samples):
                if scores[j] == scores[k]:
                    ties += 1
                    continue
                chosen, rejected = (ys[j], ys[k]) if scores[j] > scores[k] else (ys[k], ys[j])
                if flip.random() < label_noise:
                    chosen, rejected = rejected, chosen
                    flipped += 1
                pairs.append({"prompt": chat_prompt(x), "chosen": chosen, "rejected": rejected})
    stats = {"policy_pairs": len(pairs), "policy_ties_skipped": ties, "policy_labels_flipped": flipped}
    if cache is not None:
        from minipost.checkpoint import atomic_write_json

        try:
            atomic_write_json(cache, {"settings": settings, "pairs": pairs, "stats": stats})
        except OSError as e:  # a read-only checkpoint directory: no cache, nothing else changes
            print(f"policy pairs: not cached ({e})")
    return pairs, stats


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k (Chen et al. 2021, eq. 1) from n samples of which c are correct:

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that k samples drawn WITHOUT replacement from the n include a correct one. Taking
    1 - (1 - c/n)^k instead is biased low (it draws with replacement). Computed as the product
    1 - prod_{i = n-c+1}^{n} (1 - k / i), which never forms the huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


PASS_AT_K = (1, 2, 4, 8, 16, 32, 64)


def pass_at_k_curve(model, tok: Tokenizer, world, *, device, dtype=torch.float32, n: int = 64, ks=PASS_AT_K,
                    seed: int = 0, limit: int = 0, batch_size: int = 256) -> dict:
    """pass@k on the world's held-out fact and skill prompts (the ones with one checkable answer): n samples
    per prompt at temperature 1, each marked correct or not by the judge's exact-answer rule (the same
    `correct` as `accuracy`), then pass@k averaged over prompts for every k <= n in ks.

    pass@1 is the sampled accuracy (what one answer gets right on average); pass@k at large k is what the
    model CAN say when some attempt may succeed. RL that sharpens a distribution raises pass@1 toward it;
    only new knowledge raises pass@k at large k (Yue et al. 2025). `limit` > 0: an evenly spread subset.
    Returns {"k": [...], "pass_at_k": [...], "fact": [...], "skill": [...], "n", "n_prompts", "correct"}."""
    from minipost.world import judge

    prompts = [p for p in world.eval_prompts if p["kind"] in ("fact", "skill")]
    if limit > 0:
        prompts = prompts[:: max(1, len(prompts) // limit)][:limit]
    instructions = [p["prompt"] for p in prompts]
    gen = make_generator(device, seed)
    repeated = [x for x in instructions for _ in range(n)]  # n copies of each prompt, side by side
    texts, _, _ = generate_responses(model, tok, repeated, device=device, dtype=dtype, temperature=1.0,
                                     generator=gen, batch_size=batch_size)
    correct = [sum(bool(judge(x, y).correct) for y in texts[i * n : (i + 1) * n]) for i, x in enumerate(instructions)]
    ks = [k for k in ks if k <= n]

    def curve(kind=None):
        cs = [c for p, c in zip(prompts, correct) if kind is None or p["kind"] == kind]
        return [sum(pass_at_k(n, c, k) for c in cs) / len(cs) for k in ks] if cs else None

    return {"k": ks, "pass_at_k": curve(), "fact": curve("fact"), "skill": curve("skill"), "n": n,
            "n_prompts": len(prompts), "correct": correct}


def pass_at_k_cached(ckpt_dir, model, tok: Tokenizer, world, *, device, dtype=torch.float32, n: int = 64,
                     seed: int = 0, limit: int = 0) -> dict:
    """pass_at_k_curve of the model in ckpt_dir, stored there as passk.json with what made it (the weights'
    sha256, n, seed, limit) and reused when all of it matches: the report reads it, and a later stage that
    measures the same reference (SFT, base) does not sample 64 answers per prompt again."""
    from minipost.checkpoint import atomic_write_json

    settings = {"n": n, "seed": seed, "limit": limit, "max_new_tokens": MAX_NEW_TOKENS,
                "weights_sha256": weights_fingerprint(model), **sampled_on(device, dtype)}
    path = Path(ckpt_dir) / "passk.json"
    try:
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            print(f"pass@k: reusing {path} (same weights and settings)")
            return stored
    except (OSError, ValueError, AttributeError):
        pass  # missing or unreadable: measure again
    result = {**pass_at_k_curve(model, tok, world, device=device, dtype=dtype, n=n, seed=seed, limit=limit),
              "settings": settings}
    try:
        atomic_write_json(path, result)
    except OSError as e:  # a read-only checkpoint directory: the numbers are still returned
        print(f"pass@k: not stored ({e})")
    return result


@torch.no_grad()
def best_of_n_win_rates(model, tok: Tokenizer, world, ns=(1, 2, 4, 8), *, device, dtype=torch.float32, seed=0) -> dict:
    """A ceiling for preference training: pick, for every held-out prompt, the best of n samples by the
    gold judge itself (a perfect reward model, best-of-n sampling), and measure its win rate against a
    fresh pair of ordinary samples, as win_rate_vs_<name> does. Best-of-n drifts log(n) - (n - 1)/n nats
    from the model at most (Stiennon et al. 2020), so it also prices each win rate in KL.

    Two more references against the same ordinary samples:
      greedy            the model's own greedy answers: the policy sharpened to its mode.
      knowledge_oracle  the judge's maximum (1) on every prompt, except the fact and skill prompts that
                        neither the greedy answer nor any of the max(ns) samples got right (knowledge the
                        model never showed): there, the best of those answers. What preference training
                        could reach by choosing among what the model can already say.
    Returns {"best_of": {n: (win rate, mean gold score)}, "greedy": (...), "knowledge_oracle": (...)}."""
    from minipost.world import judge

    prompts = world.eval_prompts
    instructions = [p["prompt"] for p in prompts]
    gen = make_generator(device, seed)

    def one_round(temperature=1.0):  # the judge's verdicts on one answer per prompt
        texts, _, _ = generate_responses(model, tok, instructions, device=device, dtype=dtype, temperature=temperature,
                                         generator=gen)
        return [judge(x, y) for x, y in zip(instructions, texts)]

    ordinary = [v.score for v in one_round() + one_round()]
    rounds = [one_round() for _ in range(max(ns))]
    out = {"best_of": {}}
    for n in ns:
        best = [max(r[i].score for r in rounds[:n]) for i in range(len(prompts))]
        out["best_of"][n] = (win_rate(best + best, ordinary), sum(best) / len(best))
    greedy = one_round(temperature=0.0)
    answers = [greedy] + rounds  # every answer of every prompt the model gave
    oracle = [max(a[i].score for a in answers)
              if p["kind"] in ("fact", "skill") and not any(a[i].correct for a in answers) else 1.0
              for i, p in enumerate(prompts)]
    for name, scores in (("greedy", [v.score for v in greedy]), ("knowledge_oracle", oracle)):
        out[name] = (win_rate(scores + scores, ordinary), sum(scores) / len(scores))
    return out


# -----------------------------------------------------------------------------
# Reward hacking you can see: best-of-n against the reward model, scored by the gold judge


BEST_OF_N = (1, 2, 4, 8, 16, 32, 64)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || pi) = log n - (n - 1) / n nats: the analytic KL of best-of-n sampling from its base policy
    (Stiennon et al. 2020, appendix; exact when the n samples are distinct, an upper bound otherwise)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(proxy: list[float], n: int) -> list[float]:
    """The chance that each of N samples is the one best-of-n picks, when n of them are drawn at random without
    replacement and the pick is the one with the highest proxy score (ties: the first drawn; measure zero for an
    RM's float scores). Sort by proxy: the sample of rank i (1 = lowest of N) is picked when it is in the
    subset and the other n - 1 drawn all rank below it, C(i - 1, n - 1) of the C(N, n) subsets:

        w_i = C(i - 1, n - 1) / C(N, n)

    so E[gold(best of n)] = sum_i w_i gold_i, unbiased, from all N samples at once (the estimator of Nakano et al.
    2021 and Gao et al. 2022) -- far less noisy than best of the first n. n = N puts all weight on the argmax."""
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-n needs 1 <= n <= N, got n={n}, N={N}")
    order = sorted(range(N), key=lambda j: proxy[j])  # ascending proxy
    total = math.comb(N, n)
    w = [0.0] * N
    for rank, j in enumerate(order, 1):
        w[j] = math.comb(rank - 1, n - 1) / total
    return w


@torch.no_grad()
def best_of_n_curve(model, rm, tok: Tokenizer, world, ns=BEST_OF_N, *, device, dtype=torch.float32, seed: int = 0,
                    limit: int = 128, batch_size: int = 256) -> dict:
    """Gao et al. 2022's over-optimization curve, the cheap way: N = max(ns) samples per held-out prompt at
    temperature 1; the reward model scores them (the PROXY) and the gold judge too (what people want); for each n,
    best-of-n keeps the sample the RM likes best of n, and we record the expected RM score and gold score of that
    pick (best_of_n_weights) against its analytic KL to the model, log n - (n - 1) / n.

    The proxy rises with n by construction. The gold score rises while the RM and the judge agree, and falls once
    the pick is decided by what the RM over-rewards: reward hacking without any training. `limit` > 0 uses an
    evenly spread subset of that many prompts (every kind).
    Returns {"n", "kl", "rm_score", "gold_score", "N", "n_prompts", "proxy", "gold"}: the last two hold every
    sample's RM and judge score (prompt i's samples at i * N ... i * N + N - 1)."""
    from minipost.world import judge

    prompts = world.eval_prompts
    if limit > 0:
        prompts = prompts[:: max(1, len(prompts) // limit)][:limit]
    instructions = [p["prompt"] for p in prompts]
    N = max(ns)
    gen = make_generator(device, seed)
    repeated = [x for x in instructions for _ in range(N)]  # N copies of each prompt, side by side
    texts, toks, ended = generate_responses(model, tok, repeated, device=device, dtype=dtype, temperature=1.0,
                                            generator=gen, batch_size=batch_size)
    prompt_ids = [tok.encode(chat_prompt(x)) for x in repeated]
    proxy = rewards_of(rm, tok, prompt_ids, toks, ended, device, dtype).tolist()  # (P * N,)
    gold = [judge(x, y).score for x, y in zip(repeated, texts)]
    out = {"n": list(ns), "kl": [best_of_n_kl(n) for n in ns], "rm_score": [], "gold_score": [], "N": N,
           "n_prompts": len(prompts), "proxy": proxy, "gold": gold}  # proxy, gold: (P * N,), prompt-major
    for n in ns:
        rm_sum = gold_sum = 0.0
        for i in range(len(prompts)):
            r, g = proxy[i * N : (i + 1) * N], gold[i * N : (i + 1) * N]
            w = best_of_n_weights(r, n)
            rm_sum += sum(a * b for a, b in zip(w, r))
            gold_sum += sum(a * b for a, b in zip(w, g))
        out["rm_score"].append(rm_sum / len(prompts))
        out["gold_score"].append(gold_sum / len(prompts))
    return out


# -----------------------------------------------------------------------------
# Real data: no judge, so side-by-side samples on fixed held-out prompts stand in for it


def side_by_side(models: dict, tok: Tokenizer, prompts: list[list[int]], *, max_new_tokens: int, device,
                 dtype=torch.float32, rm=None) -> list[dict]:
    """Greedy answers of each model to the same prompts: [{"prompt", <name>: answer, ...}].

    `models` maps a column name to a model ({"sft": sft, "dpo": policy}). `prompts` are token ids (templated),
    left-truncated here if needed to leave max_new_tokens of room, so a long dialogue keeps its last turns;
    "prompt" holds the text the models saw. With a reward model `rm`, each answer's reward is added as
    "<name>_reward".
    """
    block_size = min(m.config.block_size for m in models.values())
    room = max(1, block_size - max_new_tokens)
    prompts = [p[-room:] for p in prompts]
    rows = [{"prompt": tok.decode(p)} for p in prompts]
    for name, model in models.items():
        texts, toks, ended = generate_from_ids(model, tok, prompts, device=device, dtype=dtype,
                                               max_new_tokens=max_new_tokens)
        rewards = rewards_of(rm, tok, prompts, toks, ended, device, dtype).tolist() if rm is not None else None
        for i, (row, text) in enumerate(zip(rows, texts)):
            row[name] = text
            if rewards is not None:
                row[f"{name}_reward"] = round(rewards[i], 4)
    return rows


@torch.no_grad()
def rewards_of(rm, tok: Tokenizer, prompts: list[list[int]], responses: list[list[int]], ended: list[bool], device,
               dtype=torch.float32, batch_size: int = 64) -> torch.Tensor:
    """The reward model's scores (N,) of responses (token lists without EOS; `ended`: the answer stopped with
    EOS, which is then appended, as in the sequences the RM trained on) to prompts (token ids)."""
    seqs = [(ids + toks + ([tok.eos_id] if eos else []), len(ids)) for ids, toks, eos in zip(prompts, responses, ended)]
    out = []
    for i in range(0, len(seqs), batch_size):
        batch = {k: v.to(device) for k, v in collate(seqs[i : i + batch_size], tok.eos_id).items()}
        with common.autocast(device, dtype):
            out.append(rm.score(batch["input_ids"], batch["attention_mask"]).float())
    return torch.cat(out)


def write_side_by_side(out_dir, rows: list[dict], title: str, show: int = 4, width: int = 300):
    """Print the first `show` rows (each prompt's last `width` characters, then every model's answer) and
    write all of them to out_dir/samples.jsonl, beside the checkpoint whose answers they are."""
    from minipost.checkpoint import atomic_write_bytes

    print(f"--- {title}")
    for row in rows[:show]:
        prompt = row["prompt"]
        print(f"prompt: {'...' if len(prompt) > width else ''}{prompt[-width:]!r}")
        for name, value in row.items():
            if name != "prompt":
                print(f"  {name:>6}: {value[:width]!r}" if isinstance(value, str) else f"  {name:>6}: {value}")
    atomic_write_bytes(Path(out_dir) / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


def main(argv=None):
    import argparse

    from minipost import checkpoint as ckpt
    from minipost.checkpoint import atomic_write_json
    from minipost.world import build_world

    p = argparse.ArgumentParser(
        description="python -m minipost.evaluate CHECKPOINT: the gold judge's best-of-n ceiling; with --rm, "
                    "best-of-n against the reward model (the over-optimization curve)")
    p.add_argument("checkpoint", nargs="?", default="checkpoints/sft")
    p.add_argument("--best-of", default="1,2,4,8", help="comma-separated n (the gold judge's ceiling)")
    p.add_argument("--rm", default="", help="a reward model checkpoint: best-of-n against IT, scored by the judge")
    p.add_argument("--best-of-n", type=common.positive_int, default=64,
                   help="with --rm: the largest n (samples per prompt); n = 1, 2, 4, ... up to it")
    p.add_argument("--limit", type=common.nonneg_int, default=128,
                   help="with --rm: held-out prompts used (an evenly spread subset); 0 = all")
    p.add_argument("--out", default="", help="with --rm: write bestofn.json into this directory")
    p.add_argument("--device", default="", help="empty = autodetect")
    p.add_argument("--seed", type=common.seed_int, default=0)
    a = p.parse_args(argv)
    try:
        ns = [common.positive_int(n) for n in a.best_of.split(",")]
    except (argparse.ArgumentTypeError, ValueError) as e:  # int('a') raises ValueError
        p.error(f"--best-of {a.best_of}: {e}")
    dev = common.pick_device(a.device)
    dtype, _ = common.pick_dtype(dev)
    try:
        model, tok, config = common.load_model(a.checkpoint, dev)
        rm = None
        if a.rm:
            rm, _, rm_config = common.load_model(a.rm, dev, kind="scalar")
            if rm_config.get("kind") != "scalar":
                raise SystemExit(f"error: --rm {a.rm} holds a language model, not a reward model (train_rm.py)")
    except ckpt.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    world = build_world(seed=config.get("world_seed", 0), n_docs=1)
    if rm is not None:
        ns = [2 ** i for i in range(int(math.log2(a.best_of_n)) + 1)]
        t0 = time.time()
        res = best_of_n_curve(common.frozen(model), common.frozen(rm), tok, world, ns, device=dev, dtype=dtype,
                              seed=a.seed, limit=a.limit)
        res["settings"] = {"checkpoint": str(a.checkpoint), "rm": str(a.rm), "seed": a.seed, "limit": a.limit,
                           "max_new_tokens": MAX_NEW_TOKENS}
        print(f"{a.checkpoint}: best of n samples by the reward model {a.rm}, scored by the gold judge "
              f"({res['n_prompts']} held-out prompts, {res['N']} samples each, {time.time() - t0:.0f}s)")
        for n, kl, r, g in zip(res["n"], res["kl"], res["rm_score"], res["gold_score"]):
            print(f"  n={n:>3}: KL {kl:.2f} nats | RM score {r:+.3f} | gold score {g:+.3f}")
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(a.out) / "bestofn.json", res)
            print(f"wrote {Path(a.out) / 'bestofn.json'}")
        return
    res = best_of_n_win_rates(common.frozen(model), tok, world, ns, device=dev, dtype=dtype, seed=a.seed)
    print(f"{a.checkpoint}: best of n samples by the gold judge vs an ordinary sample (held-out prompts)")
    for n, (w, g) in res["best_of"].items():
        print(f"  n={n}: win rate {100 * w:.1f}%, gold score {g:+.3f}, KL <= {best_of_n_kl(n):.2f} nats")
    w, g = res["greedy"]
    print(f"  its greedy answers: win rate {100 * w:.1f}%, gold score {g:+.3f}")
    w, g = res["knowledge_oracle"]
    print(f"  knowledge oracle (perfect answers, except the facts and skills it never got right): "
          f"win rate {100 * w:.1f}%, gold score {g:+.3f}")


if __name__ == "__main__":
    from minipost import errors

    errors.run(main)
