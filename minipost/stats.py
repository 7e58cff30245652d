"""
How sure a number is: win / tie / loss counts of paired judge scores, and 95% intervals from a percentile
bootstrap over prompts. Used by evaluate.py (eval.json) and report.py; pure, deterministic, no model.

Every headline number of the evaluation is a ratio of sums over prompts -- a rate (refused samples / samples), a
mean score (sum of scores / samples), a win rate (wins + ties/2 / pairs), a KL (sum of per-sample KLs / samples) --
so one function gives all their intervals: `bootstrap_ci(num, den)`, where prompt i contributes num[i] to the
numerator and den[i] to the denominator. The unit of resampling is the PROMPT: a prompt's several samples travel
together, because they are not independent (a model that does not know a fact gets all four samples wrong), and
treating them as independent draws would make every interval too narrow.
"""

import torch

from minipost.generation import index_generator

KINDS = ("fact", "skill", "harmful", "benign", "open")


def bootstrap_ci(num: list[float], den: list[float], *, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of sum(num) / sum(den) over units (prompts).

    Draw n_boot resamples of the len(num) units with replacement, compute each resample's ratio of sums, and
    return the (1 - level)/2 and (1 + level)/2 quantiles of those ratios (Efron & Tibshirani 1993, ch. 13), as
    [low, high]. Seeded: the same inputs give the same interval. None when there are no units; resamples whose
    denominator is 0 (every unit drawn had nothing to count) are dropped."""
    if len(num) != len(den):
        raise ValueError(f"num has {len(num)} units, den {len(den)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not num:
        return None
    gen = index_generator(seed)  # CPU index sampling: which prompts each resample draws
    idx = torch.randint(len(num), (n_boot, len(num)), generator=gen)  # (n_boot, units): each row one resample
    n, d = torch.tensor(num, dtype=torch.float64)[idx].sum(1), torch.tensor(den, dtype=torch.float64)[idx].sum(1)
    ratios = (n / d)[d > 0]  # (<= n_boot,)
    if ratios.numel() == 0:
        return None
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(ratios, q).tolist()  # linear interpolation between order statistics
    return [low, high]


def paired_counts(ours: list[list[float]], theirs: list[list[float]]) -> tuple[list[int], list[int], list[int]]:
    """Per prompt i: (wins, ties, losses) of ours[i][k] against theirs[i][k], as three lists."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} prompts of ours, {len(theirs)} of theirs")
    w, t, l = [], [], []
    for a, b in zip(ours, theirs):
        if len(a) != len(b):
            raise ValueError(f"a prompt with {len(a)} scores of ours and {len(b)} of theirs")
        w.append(sum(x > y for x, y in zip(a, b)))
        t.append(sum(x == y for x, y in zip(a, b)))
        l.append(sum(x < y for x, y in zip(a, b)))
    return w, t, l


def win_tie_loss(ours: list[list[float]], theirs: list[list[float]], *, seed: int = 0) -> dict:
    """Paired judge scores, prompt by prompt (ours[i][k] against theirs[i][k]: sample k of prompt i) ->
    {"win", "tie", "loss": counts, "win_rate": (W + T/2) / (W + T + L), "decisive_rate": W / (W + L) (None without a
    decisive pair), each rate with its 95% interval (bootstrap over prompts) under "<rate>_ci"}.

    The win rate counts a tie as half a win, so it can only move as far from 50% as the decisive share allows:
    with T ties out of N pairs, it lies in [T / 2N, 1 - T / 2N]. The decisive rate is the win rate among the
    pairs the judge could tell apart."""
    w, t, l = paired_counts(ours, theirs)
    W, T, L = sum(w), sum(t), sum(l)
    pairs = [a + b + c for a, b, c in zip(w, t, l)]
    decisive = [a + c for a, c in zip(w, l)]
    return {"win": W, "tie": T, "loss": L,
            "win_rate": (W + T / 2) / (W + T + L) if W + T + L else None,
            "win_rate_ci": bootstrap_ci([a + b / 2 for a, b in zip(w, t)], pairs, seed=seed),
            "decisive_rate": W / (W + L) if W + L else None,
            "decisive_rate_ci": bootstrap_ci(w, decisive, seed=seed) if W + L else None}


def win_tie_loss_by_kind(ours: list[list[float]], theirs: list[list[float]], kinds: list[str], *,
                         seed: int = 0) -> dict:
    """win_tie_loss overall ("all") and for each kind of prompt present (fact, skill, harmful, benign, open)."""
    out = {"all": win_tie_loss(ours, theirs, seed=seed)}
    for kind in KINDS:
        keep = [i for i, k in enumerate(kinds) if k == kind]
        if keep:
            out[kind] = win_tie_loss([ours[i] for i in keep], [theirs[i] for i in keep], seed=seed)
    return out
