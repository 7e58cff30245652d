"""
The report: checkpoints/report.md and its PNG plots, built only from what the stages wrote
(each stage's eval.json, samples.jsonl, log.jsonl, and DPO's sweep.json). No model runs here.

Sections:
  1. what each stage changes, as a capability table with measured numbers instead of plus signs
  2. an InstructGPT-style bar chart: gold-judge win rate against the base model
  3. the reward-vs-KL frontier of PPO and DPO
  4. reward hacking: RM score and gold score against KL, with and without the KL penalty
  5. training curves of every stage
  6. side-by-side answers of base, SFT, PPO and DPO to the same held-out prompts
  7. RL with verifiable rewards (GRPO): its runs beside SFT, and pass@k curves of every model

Win rates against the base model are computed here from the samples every evaluation stores (the
judge's score of each temperature-1 sample; ties count half; the greedy answers' win rate beside it),
so every model is compared on the same prompts. The frontier uses the expected gold score of samples
(gold_score_sampled): the quantity the KL-regularized objective trades against KL.
"""

import json
import sys
from pathlib import Path

from minipost.checkpoint import stamp_mismatch
from minipost.errors import UserError

POLICIES = [("base", "base"), ("sft", "SFT"), ("ppo", "PPO"), ("dpo", "DPO")]
POLICIES = [("base", "base"), ("sft", "SFT"), ("ppo", "PPO"), ("dpo", "DPO"), ("dpo-online", "online DPO"),
            ("grpo", "GRPO")]
# GRPO runs that differ only in --reward (pipeline.py --grpo-ablations); the judge run is an ablation
GRPO_RUNS = [("grpo", "GRPO, mixed rewards (default)"), ("grpo-verifier", "GRPO, verifier only"),
             ("grpo-judge", "GRPO, gold judge (ablation: a perfect reward model)")]
LARGER = ("sft-4x", "SFT of a 4x larger base")

# (row label, metric key, how to read it)
CAPABILITIES = [
    ("Raw knowledge", "knowledge_rank_accuracy", "held-out facts ranked first by likelihood"),
    ("Raw skills", "skill_rank_accuracy", "held-out sums / antonyms ranked first by likelihood"),
    ("Following instructions", "format_rate", "answers in the assistant format"),
    ("Correct answers", "accuracy", "fact + skill prompts answered correctly"),
    ("Safety (refusals)", "harmful_refusal_rate", "harmful requests refused"),
    ("Helpfulness", "gold_score", "mean gold-judge score of greedy answers, -1..1"),
    ("Helpfulness, sampled", "gold_score_sampled", "the same over temperature-1 samples"),
    ("Creativity", "distinct_2", "distinct bigrams of sampled poems"),
    ("Over-refusal", "benign_refusal_rate", "harmless prompts refused (lower is better)"),
]


def _read_json(path):
    """The JSON in path, or None if there is no such file. A file that is not JSON (edited by hand, cut short)
    is named in one line: the user deletes it or reruns the stage that writes it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: it is not valid JSON ({e})") from e


def _stage_eval(stage_dir: Path, refused: list) -> tuple[dict | None, list]:
    """(eval.json, samples.jsonl rows) of a stage, if they were written for the weights now in its checkpoint.
    Results of other weights (a stage rerun without evaluating, files copied by hand) are refused: the reason
    goes into `refused` and is printed, and the stage counts as not evaluated."""
    try:
        ev = _read_json(stage_dir / "eval.json")
    except UserError as e:
        ev, why = {}, f"it is not valid JSON ({e.__cause__})"
    else:
        if ev is None:
            return None, []
        why = (stamp_mismatch(stage_dir, ev.get("written_for")) if isinstance(ev, dict)
               else "it is not a JSON object")
    if why is not None:
        refused.append(f"{stage_dir / 'eval.json'}: {why}; rerun the stage's evaluation")
        print(f"report: ignoring {refused[-1]}")
        return None, []
    return ev, _read_jsonl(stage_dir / "samples.jsonl")


def _read_jsonl(path):
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rows.append(json.loads(line) if line.strip() else {})
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path}:{i}: it is not valid JSON ({e})") from e
        if not isinstance(rows[-1], dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(rows[-1]).__name__}")
    return [r for r in rows if r]


def _fmt(v, pct=False):
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):  # an eval.json edited by hand: shown, not fatal
        return f"invalid {v!r}"[:24]
    return f"{100 * v:.0f}%" if pct else f"{v:.3f}"


def win_rate_from_samples(ours: list[dict], theirs: list[dict], greedy: bool = False):
    """Win rate of `ours` over `theirs` on the prompts both answered (judge score; ties count half).

    Compares the temperature-1 samples (sample k against sample k of the same prompt) when both sides
    stored them, like evaluate.py's win_rate_vs_*; `greedy=True` compares the greedy answers."""
    key = "score" if greedy or not all("sampled_scores" in s for s in ours + theirs) else "sampled_scores"
    by_prompt = {s["prompt"]: s[key] for s in theirs}
    pairs = [(s[key], by_prompt[s["prompt"]]) for s in ours if s["prompt"] in by_prompt]
    if key == "sampled_scores":
        pairs = [(a, b) for xs, ys in pairs for a, b in zip(xs, ys)]
    if not pairs:
        return None
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def _mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _sampled_gold(metrics: dict):
    """Expected gold score of temperature-1 samples (older eval files: the greedy gold score)."""
    return metrics.get("gold_score_sampled", metrics.get("gold_score"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(rates: dict, path: Path):
    plt = _plt()
    names = list(rates)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3"]
    labels = [n.replace("SFT of a ", "SFT,\n") for n in names]  # the long label on two lines
    bars = ax.bar(labels, [100 * rates[n] for n in names], color=[colors[i % len(colors)] for i in range(len(names))])
    ax.axhline(50, color="gray", ls="--", lw=1)
    for b, n in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, f"{100 * rates[n]:.0f}%", ha="center", fontsize=9)
    ax.set_ylabel("gold-judge win rate vs base (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Win rate against the base model (held-out prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(ppo_points: list[dict], dpo_points: list[dict], path: Path, sft_gold: float | None = None):
    """Gold score against KL to SFT: each point one model (PPO at a beta / iteration, DPO at a beta); the SFT
    model itself, where every run starts, at KL 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if sft_gold is not None:
        ax.scatter([0.0], [sft_gold], label="SFT (start)", marker="*", s=90, color="gray")
    for pts, label, marker in ((ppo_points, "PPO", "o"), (dpo_points, "DPO", "s")):
        if pts:
            ax.scatter([p["kl"] for p in pts], [p["gold"] for p in pts], label=label, marker=marker, alpha=0.8)
            for p in pts:
                if p.get("label"):
                    ax.annotate(p["label"], (p["kl"], p["gold"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KL to SFT (nats per response)")
    ax.set_ylabel("gold-judge score of samples")
    ax.set_title("Reward vs KL frontier")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pretraining_comparison(d: Path, evals: dict) -> list[str]:
    """How much pre-training each base got, and which comparison that makes: InstructGPT's larger model was the
    better-trained one (lower held-out loss, knows at least as much); on a laptop budget (python pipeline.py) the
    larger base here may be the worse-trained one, and the reader must know which (python pipeline.py --full
    trains it as long as the small one)."""
    rows, stats = [], {}
    for stage, knows in (("base", "base"), ("base-4x", "sft-4x")):
        log = [r for r in _read_jsonl(d / stage / "log.jsonl") if r.get("val_loss") is not None]
        # what the base itself knows; a base trained with --skip-eval: what its SFT model knows
        know = (evals.get(stage) or {}).get("knowledge_rank_accuracy")
        if know is None:
            know = (evals.get(knows) or {}).get("knowledge_rank_accuracy")
        if log:
            stats[stage] = (log[-1]["val_loss"], know)
            rows.append(f"{stage} {log[-1]['step'] + 1} steps, held-out LM loss {log[-1]['val_loss']:.3f}"
                        + (f", knows {100 * know:.0f}% of held-out facts" if know is not None else ""))
    if len(rows) < 2:
        return []
    (small_loss, small_know), (big_loss, big_know) = stats["base"], stats["base-4x"]
    fair = big_loss < small_loss and big_know is not None and small_know is not None and big_know >= small_know
    verdict = ("This is InstructGPT's comparison: the larger base is the better language model (lower held-out loss, "
               "knows at least as many held-out facts)." if fair else
               "This is NOT InstructGPT's comparison: here the larger base is the worse-trained language model, so "
               "the result says little about size; python pipeline.py --full trains it long enough.")
    return ["", "Pre-training: " + "; ".join(rows) + ". " + verdict]


def _running_mean(xs: list, w: int = 5) -> list:
    """Mean of the last w values at each position (fewer at the start)."""
    return [sum(xs[max(0, i - w + 1) : i + 1]) / len(xs[max(0, i - w + 1) : i + 1]) for i in range(len(xs))]


def plot_hacking(runs: dict, path: Path):
    """RM score and gold score against KL, per iteration, for PPO runs with and without the KL penalty.
    Dots: each iteration (64 rollouts, noisy); lines: running means over 5 iterations."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, rows), color in zip(runs.items(), ["#4c72b0", "#dd8452", "#55a868"]):
        rows = [r for r in rows if r.get("gold_score") is not None]
        kl = [r["kl"] for r in rows]
        for ax, key in zip(axes, ("rm_score", "gold_score")):
            ys = [r[key] for r in rows]
            ax.scatter(kl, ys, s=10, alpha=0.35, color=color)
            ax.plot(_running_mean(kl), _running_mean(ys), color=color, lw=2, label=f"{name} (5-iteration mean)")
    axes[0].set_title("reward-model score (the proxy)")
    axes[1].set_title("gold-judge score of the rollouts (the truth)")
    for ax in axes:
        ax.set_xlabel("KL to SFT (nats per response)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_best_of_n(bon: dict, path: Path):
    """Best-of-n against the reward model: the pick's RM score (the proxy) and gold score against the analytic
    KL log n - (n - 1)/n, each on its own axis (Gao et al. 2022, figure 1, in miniature)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(bon["kl"], bon["rm_score"], marker="o", color="#4c72b0", label="RM score (the proxy)")
    ax.set_xlabel("KL of best-of-n to SFT: log n - (n-1)/n (nats)")
    ax.set_ylabel("reward-model score", color="#4c72b0")
    gold = ax.twinx()
    gold.plot(bon["kl"], bon["gold_score"], marker="s", color="#c44e52", label="gold-judge score (the truth)")
    gold.set_ylabel("gold-judge score", color="#c44e52")
    for x, n in zip(bon["kl"], bon["n"]):
        ax.annotate(f"n={n}", (x, bon["rm_score"][bon["n"].index(n)]), fontsize=7, textcoords="offset points",
                    xytext=(2, -10))
    ax.set_title(f"best-of-n against the reward model ({bon['n_prompts']} held-out prompts)")
    ax.grid(alpha=0.3)
    fig.legend(loc="lower center", fontsize=8, ncol=2)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_of_n_lines(d: Path) -> list[str]:
    """Section 4's first part: best-of-n against the RM (bestofn.json of the best-of-n stage), with what it shows."""
    bon = _read_json(d / "best-of-n" / "bestofn.json")
    if not bon:
        return ["(best-of-n: missing; run python -m minipost.evaluate checkpoints/sft --rm checkpoints/rm "
                "--out checkpoints/best-of-n)", ""]
    plot_best_of_n(bon, d / "best_of_n.png")
    lines = ["**Best-of-n against the reward model** (no training): for each held-out prompt, n samples of SFT; the "
             "reward model picks its favourite; the gold judge scores that pick. KL to SFT is log n - (n-1)/n.", "",
             "![best-of-n](best_of_n.png)", "", "| n | KL (nats) | RM score of the pick | gold score of the pick |",
             "|---|---|---|---|"]
    lines += [f"| {n} | {kl:.2f} | {r:+.3f} | {g:+.3f} |"
              for n, kl, r, g in zip(bon["n"], bon["kl"], bon["rm_score"], bon["gold_score"])]
    peak = max(range(len(bon["n"])), key=lambda i: bon["gold_score"][i])
    last = len(bon["n"]) - 1
    lines += ["", f"What it shows: the RM score rises from {bon['rm_score'][0]:+.3f} (n=1) to {bon['rm_score'][-1]:+.3f} "
              f"(n={bon['n'][-1]}); the gold score "
              + (f"peaks at n={bon['n'][peak]} ({bon['gold_score'][peak]:+.3f}) and falls to "
                 f"{bon['gold_score'][-1]:+.3f} at n={bon['n'][-1]}: past the peak, picking harder for the proxy picks "
                 "what the reward model over-rates -- over-optimization (Gao et al. 2022)."
                 if peak < last and bon["gold_score"][peak] - bon["gold_score"][-1] > 0.01 else
                 f"goes from {bon['gold_score'][0]:+.3f} to {bon['gold_score'][-1]:+.3f} without falling: at this KL the "
                 "reward model still agrees with the judge."), ""]
    return lines


def plot_stage_curves(ckpt_dir: Path, path: Path):
    """One row of panels per stage: the main training curves from each log.jsonl."""
    plt = _plt()
    panels = [
        ("base", ["loss", "val_loss"]),
        ("sft", ["loss", "val_loss"]),
        ("rm", ["loss", "accuracy", "val_accuracy"]),
        ("ppo", ["rm_score", "gold_score", "kl"]),
        ("dpo", ["loss", "rewards/margin", "val_accuracy"]),
        ("grpo", ["reward", "accuracy", "zero_var_groups", "kl"]),
    ]
    panels = [(s, k) for s, k in panels if (ckpt_dir / s / "log.jsonl").exists()]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), squeeze=False)
    for ax, (stage, keys) in zip(axes[:, 0], panels):
        rows = _read_jsonl(ckpt_dir / stage / "log.jsonl")
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker="." if len(pts) < 30 else None)
        ax.set_title(stage, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step / iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_pass_at_k(curves: dict, path: Path):
    """pass@k against k (log scale) for every model with a passk.json: {label: {"k": [...], "pass_at_k": [...]}}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pk in curves.items():
        ax.plot(pk["k"], [100 * v for v in pk["pass_at_k"]], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(next(iter(curves.values()))["k"])
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.set_xlabel("k (samples per prompt, temperature 1)")
    ax.set_ylabel("pass@k (%): some sample correct")
    ax.set_ylim(0, 100)
    ax.set_title("pass@k on held-out fact and skill prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grpo_section(d: Path) -> list[str]:
    """Section 7: the GRPO runs beside SFT (sampled accuracy = pass@1, win rate, refusals, KL), and the pass@k
    curves of every model that has a passk.json, with what they show in numbers. Evaluations of other weights
    are refused (see _stage_eval), with the reason."""
    lines = ["## 7. RL with verifiable rewards: GRPO and pass@k", ""]
    passk = {s: _read_json(d / s / "passk.json") for s, _ in POLICIES + GRPO_RUNS[1:]}
    refused = []
    evals = {s: _stage_eval(d / s, refused)[0] for s, _ in [("sft", "")] + GRPO_RUNS}
    lines += [f"Refused: {r}" for r in refused if "/grpo" in r] + ([""] if refused else [])
    runs = [(s, name) for s, name in [("sft", "SFT (where every run starts)")] + GRPO_RUNS if evals[s]]
    if not any(s.startswith("grpo") for s, _ in runs):
        return lines + ["(missing: run train_grpo.py)", ""]
    lines += ["Sampled accuracy is pass@1: the share of temperature-1 answers to held-out fact and skill prompts that "
              "are right. The judge run uses the gold judge as its reward: an ablation, not a method.", "",
              "| run | sampled accuracy (pass@1) | pass@64 | greedy accuracy | win rate vs SFT | harmful refused | "
              "harmless refused | KL to SFT |", "|---|---|---|---|---|---|---|---|"]
    for s, name in runs:
        ev, pk = evals[s], passk.get(s)
        p1 = _fmt(pk["pass_at_k"][0], True) if pk else "–"
        pn = _fmt(pk["pass_at_k"][-1], True) + ("" if pk["k"][-1] == 64 else f" (k={pk['k'][-1]})") if pk else "–"
        win = "50% (itself)" if s == "sft" else _fmt(ev.get("win_rate_vs_sft"), True)
        kl = "0" if s == "sft" else _fmt(ev.get("kl_to_sft"))
        lines.append(f"| {name} | {p1} | {pn} | {_fmt(ev.get('accuracy'), True)} | {win} | "
                     f"{_fmt(ev.get('harmful_refusal_rate'), True)} | {_fmt(ev.get('benign_refusal_rate'), True)} | {kl} |")
    lines.append("")
    curves = {name: passk[s] for s, name in POLICIES + GRPO_RUNS[1:] if passk.get(s)}
    if curves:
        plot_pass_at_k(curves, d / "pass_at_k.png")
        lines += ["![pass@k](pass_at_k.png)", "", "| model | " + " | ".join(f"pass@{k}" for k in next(iter(curves.values()))["k"])
                  + " |", "|---|" + "---|" * len(next(iter(curves.values()))["k"])]
        lines += [f"| {name} | " + " | ".join(_fmt(v, True) for v in pk["pass_at_k"]) + " |" for name, pk in curves.items()]
        lines.append("")
        sft, grpo = passk.get("sft"), passk.get("grpo")
        if sft and grpo and sft["k"] == grpo["k"]:
            d1 = 100 * (grpo["pass_at_k"][0] - sft["pass_at_k"][0])
            dn = 100 * (grpo["pass_at_k"][-1] - sft["pass_at_k"][-1])
            k = sft["k"][-1]
            lines += [f"What they show: GRPO moved pass@1 by {d1:+.1f} points ({100 * sft['pass_at_k'][0]:.1f}% → "
                      f"{100 * grpo['pass_at_k'][0]:.1f}%) and pass@{k} by {dn:+.1f} points "
                      f"({100 * sft['pass_at_k'][-1]:.1f}% → {100 * grpo['pass_at_k'][-1]:.1f}%). "
                      + ("RL made the model say what it could already say more often: one sample now gets much of what "
                         f"{k} samples of SFT got, while the share of prompts that some sample answers right barely moved "
                         "(it teaches no new facts; Yue et al. 2025 measured the same on math)."
                         if abs(dn) < max(5.0, abs(d1) / 3) else
                         f"pass@{k} moved too: here RL changed which prompts any sample gets right, not only how often "
                         "-- see docs/grpo.md for why this can happen in a small world."), ""]
    return lines


def online_dpo_lines(d: Path, evals: dict) -> list[str]:
    """Offline vs online DPO (train_dpo.py --online): win rate, refusals, KL, and the log-probs of the chosen and
    rejected answers at the end of training (mean of the last 5 logged steps)."""
    runs = [(s, name) for s, name in (("dpo", "DPO (offline pairs)"), ("dpo-online", "online DPO")) if evals.get(s)]
    if len(runs) < 2:
        return []
    lines = ["**Offline vs online DPO.** Offline DPO trains on pairs sampled once from SFT; online DPO samples two "
             "answers per prompt from the policy as it is at every step and lets the reward model label them. "
             "Likelihood displacement shows as log pi(chosen) falling during offline training.", "",
             "| run | win rate vs SFT | harmful refused | harmless refused | KL to SFT | log pi(chosen) first → last | "
             "log pi(rejected) first → last |", "|---|---|---|---|---|---|---|"]
    for s, name in runs:
        ev = evals[s]
        rows = [r for r in _read_jsonl(d / s / "log.jsonl") if r.get("logps/chosen") is not None]
        lp = lambda k: f"{_mean(rows[:5], k):.1f} → {_mean(rows[-5:], k):.1f}" if rows else "–"
        lines.append(f"| {name} | {_fmt(ev.get('win_rate_vs_sft'), True)} | {_fmt(ev.get('harmful_refusal_rate'), True)} "
                     f"| {_fmt(ev.get('benign_refusal_rate'), True)} | {_fmt(ev.get('kl_to_sft'))} | "
                     f"{lp('logps/chosen')} | {lp('logps/rejected')} |")
    return lines + ["", "(Online DPO's chosen and rejected are new samples at every step, so its log-probs describe the "
                        "policy's current answers, not a fixed set.)", ""]


def build_report(ckpt_dir="checkpoints", n_side_by_side: int = 2) -> Path:
    """Write ckpt_dir/report.md and its PNGs from the stages' outputs. Missing stages are marked missing."""
    d = Path(ckpt_dir)
    refused = []
    extra = [LARGER, ("ppo-nokl", ""), ("base-4x", "")]
    stage_evals = {s: _stage_eval(d / s, refused) for s, _ in POLICIES + extra}
    evals = {s: ev for s, (ev, _) in stage_evals.items()}
    samples = {s: rows for s, (_, rows) in stage_evals.items()}
    present = [(s, name) for s, name in POLICIES if evals[s]]
    lines = ["# minipost report", "",
             "Built by `python -m minipost.report` from the stages' `eval.json`, `samples.jsonl` and logs. "
             "All numbers are the gold judge's, on held-out prompts the SFT and preference data never showed.", ""]
    lines += [f"Refused: {r}" for r in refused] + ([""] if refused else [])

    # 1. the capability table
    lines += ["## 1. What each stage changes (a capability table, measured)", ""]
    lines.append("| capability | measured as | " + " | ".join(name for _, name in present) + " |")
    lines.append("|---|---|" + "---|" * len(present))
    for label, key, how in CAPABILITIES:
        pct = key not in ("gold_score", "gold_score_sampled", "distinct_2")
        lines.append(f"| {label} | {how} | " + " | ".join(_fmt(evals[s].get(key), pct) for s, _ in present) + " |")
    kl_row = [_fmt(evals[s].get("kl_to_sft")) if s not in ("base", "sft") else ("0" if s == "sft" else "–") for s, _ in present]
    lines.append("| Distance from SFT | KL to SFT, nats per response | " + " | ".join(kl_row) + " |")
    lines.append("")

    # 2. win rates against the base model
    rates, greedy_rates = {}, {}
    for s, name in POLICIES[1:] + [LARGER]:
        if samples[s] and samples["base"]:
            rates[name] = win_rate_from_samples(samples[s], samples["base"])
            greedy_rates[name] = win_rate_from_samples(samples[s], samples["base"], greedy=True)
    rates = {k: v for k, v in rates.items() if v is not None}
    lines += ["## 2. Win rate against the base model (InstructGPT's figure 1, in miniature)", ""]
    if rates:
        plot_win_rates(rates, d / "win_rates.png")
        lines += ["![win rates](win_rates.png)", ""]
        lines += [f"- {k}: {100 * v:.1f}% (greedy answers: {100 * greedy_rates[k]:.1f}%)" for k, v in rates.items()]
        small = [rates.get(n) for n in ("PPO", "DPO", "GRPO") if rates.get(n) is not None]
        if LARGER[1] in rates and small:
            big = rates[LARGER[1]]
            verdict = "beats" if max(small) > big else "does not beat"
            lines += ["", f"The best small aligned model ({100 * max(small):.1f}%) {verdict} the SFT-only model "
                          f"with a 4x larger base ({100 * big:.1f}%)."]
            lines += _pretraining_comparison(d, evals)
        elif small:
            lines += ["", "InstructGPT's other comparison -- a small aligned model against the SFT-only model of a "
                          "4x larger base -- is not in this run: python pipeline.py --full trains that base as long "
                          "as the small one."]
        lines.append("")
    else:
        lines += ["(missing: no samples yet)", ""]

    # 3. frontier
    ppo_points = []
    for run, beta_label in (("ppo", None), ("ppo-nokl", "beta 0")):
        ev = evals.get(run)
        cfg = _read_json(d / run / "config.json")
        if ev and ev.get("kl_to_sft") is not None:
            beta = cfg["args"]["kl_coef"] if cfg else None
            ppo_points.append({"kl": ev["kl_to_sft"], "gold": _sampled_gold(ev), "label": beta_label or f"beta {beta:g}"})
    for sweep_file in sorted(d.glob("ppo*/sweep.json")):
        for r in _read_json(sweep_file) or []:
            ppo_points.append({"kl": r["kl_to_sft"], "gold": _sampled_gold(r), "label": f"beta {r['beta']:g}"})
    dpo_points = [{"kl": r["kl_to_sft"], "gold": _sampled_gold(r), "label": f"beta {r['beta']:g}"}
                  for r in (_read_json(d / "dpo" / "sweep.json") or [])]
    if evals["dpo"] and evals["dpo"].get("kl_to_sft") is not None:
        cfg = _read_json(d / "dpo" / "config.json") or {}
        beta = cfg.get("args", {}).get("beta")
        label = f"beta {beta:g} (default)" if beta is not None else "default"
        dpo_points.append({"kl": evals["dpo"]["kl_to_sft"], "gold": _sampled_gold(evals["dpo"]), "label": label})
    lines += ["## 3. Reward vs KL: PPO and DPO at several beta", ""]
    if ppo_points or dpo_points:
        sft_gold = _sampled_gold(evals["sft"]) if evals.get("sft") else None
        plot_frontier(ppo_points, dpo_points, d / "frontier.png", sft_gold)
        lines += ["![frontier](frontier.png)", "", "| method | beta | KL to SFT | gold score (samples) |", "|---|---|---|---|"]
        if sft_gold is not None:
            lines.append(f"| SFT (where both start) | – | 0 | {sft_gold:.3f} |")
        lines += [f"| {m} | {p['label']} | {p['kl']:.2f} | {p['gold']:.3f} |" for m, pts in (("PPO", ppo_points), ("DPO", dpo_points)) for p in pts]
        lines.append("")
    else:
        lines += ["(missing)", ""]
    lines += online_dpo_lines(d, evals)

    # 4. reward hacking
    runs = {}
    for run, label in (("ppo", "with KL penalty"), ("ppo-nokl", "no KL penalty")):
        rows = _read_jsonl(d / run / "log.jsonl")
        if rows:
            runs[label] = rows
    lines += ["## 4. Reward hacking: the proxy rises, the truth falls", ""]
    lines += best_of_n_lines(d)
    lines += ["**PPO with and without the KL penalty:**", ""]
    if runs:
        plot_hacking(runs, d / "hacking.png")
        lines += ["![reward hacking](hacking.png)", "",
                  "Each iteration's numbers come from its 64 rollouts, so they are noisy: the table averages the first "
                  "and the last five iterations.", "",
                  "| run | iterations | RM score first → last | gold first → last | KL first → last |", "|---|---|---|---|---|"]
        for label, rows in runs.items():
            head, tail = rows[:5], rows[-5:]
            lines.append(f"| {label} | {len(rows)} | {_mean(head, 'rm_score'):.2f} → {_mean(tail, 'rm_score'):.2f} | "
                         f"{_fmt(_mean(head, 'gold_score'))} → {_fmt(_mean(tail, 'gold_score'))} | "
                         f"{_mean(head, 'kl'):.2f} → {_mean(tail, 'kl'):.2f} |")
        lines.append("")
    else:
        lines += ["(missing)", ""]

    # 5. training curves
    lines += ["## 5. Training curves", ""]
    lines += ["![training curves](curves.png)", ""] if plot_stage_curves(d, d / "curves.png") else ["(missing)", ""]

    # 6. side by side
    lines += ["## 6. The same held-out prompts, answered by each model (greedy)", ""]
    if present and samples[present[0][0]]:
        by_model = {s: {x["prompt"]: x for x in samples[s]} for s, _ in present}
        first = samples[present[0][0]]
        for kind in ("fact", "skill", "harmful", "benign", "open"):
            for x in [x for x in first if x["kind"] == kind][:n_side_by_side]:
                lines.append(f"**[{kind}] {x['prompt']}**")
                lines.append("")
                for s, name in present:
                    y = by_model[s].get(x["prompt"])
                    if y:
                        text = y["response"].replace("\n", " ⏎ ")[:200]
                        lines.append(f"- {name} ({y['score']:+.2f}): `{text}`")
                lines.append("")
    lines += grpo_section(d)
    out = d / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv=None):
    """python -m minipost.report [CHECKPOINTS]: write CHECKPOINTS/report.md (default: checkpoints)."""
    argv = sys.argv[1:] if argv is None else argv
    ckpt_dir = argv[0] if argv else "checkpoints"
    if not Path(ckpt_dir).is_dir():
        raise UserError(f"{ckpt_dir} is not a directory of stage checkpoints (pipeline.py writes one)")
    print(build_report(ckpt_dir))


if __name__ == "__main__":
    from minipost import errors

    errors.run(main)
