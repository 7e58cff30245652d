"""minipost/lessons.py on hand-made eval.json files: each lesson holds, fails or is not measured for the reason
its threshold says, and the table shows the measured number in every cell."""

import json

from minipost import lessons


def wtl(decisive, low, high):
    return {"all": {"decisive_rate": decisive, "decisive_rate_ci": [low, high]}}


def write_run(d, *, base_format=0.0, sft_format=0.9, sft_harmful=0.4, methods=None, bon=None):
    def ev(stage, metrics):
        (d / stage).mkdir(parents=True, exist_ok=True)
        (d / stage / "eval.json").write_text(json.dumps(metrics))

    ev("base", {"format_rate_sampled": base_format})
    ev("sft", {"format_rate_sampled": sft_format, "harmful_refusal_rate_sampled": sft_harmful})
    for name, m in (methods or {}).items():
        ev(name, m)
    if bon is not None:
        (d / "best-of-n").mkdir(parents=True, exist_ok=True)
        (d / "best-of-n" / "bestofn.json").write_text(json.dumps(bon))
    (d / "sft" / "config.json").write_text(json.dumps({"world_seed": 3}))
    return d


def method(harmful, benign, decisive, low, high, vs_base):
    return {"harmful_refusal_rate_sampled": harmful, "benign_refusal_rate_sampled": benign,
            "win_tie_loss_vs_sft": wtl(decisive, low, high), "win_rate_vs_base": vs_base}


GOOD = {"ppo": method(0.80, 0.05, 0.70, 0.60, 0.80, 0.90), "dpo": method(0.60, 0.02, 0.66, 0.55, 0.75, 0.85),
        "grpo": method(0.95, 0.20, 0.74, 0.66, 0.82, 0.80)}
BON = {"n": [1, 2, 4, 8, 16, 32, 64], "rm_score": [0, .2, .4, .5, .6, .7, .8], "gold_score": [0, .1, .2, .15, .1, 0, -.1]}


def by_start(rows):
    return {r["lesson"].split(":")[0]: r for r in rows}


def test_every_lesson_holds_on_a_run_that_shows_it(tmp_path):
    rows = by_start(lessons.check_run(write_run(tmp_path, methods=GOOD, bon=BON)))
    assert all(r["holds"] is True for r in rows.values()), rows
    # grpo refuses the most harmful requests but 20% of the harmless: the safety lesson is carried by ppo
    assert rows["preference training fixes safety"]["cell"] == "ppo: harmful 40% -> 80%, harmless 5%"
    assert rows["preference training improves quality"]["cell"].startswith("grpo: 74% [66%, 82%]")
    assert rows["the reward model gets gamed"]["cell"].startswith("gold peaks at n = 4")


def test_each_lesson_fails_on_its_own_threshold(tmp_path):
    bad = {"ppo": method(0.65, 0.05, 0.64, 0.48, 0.80, 0.74), "dpo": method(0.50, 0.02, 0.52, 0.45, 0.60, 0.90)}
    rising = {**BON, "gold_score": [0, .1, .2, .3, .4, .5, .6]}
    rows = by_start(lessons.check_run(write_run(tmp_path, sft_format=0.79, methods=bad, bon=rising)))
    assert rows["SFT fixes the format"]["holds"] is False  # +79 points, not +80
    assert rows["preference training fixes safety"]["holds"] is False  # +25 points, not +30
    assert rows["preference training improves quality"]["holds"] is False  # 64% < 65%, interval reaches 48%
    assert rows["DPO about as good as PPO"]["holds"] is False  # 52% vs 64%: 12 points apart
    assert rows["the reward model gets gamed"]["holds"] is False  # gold still rising at n = 64
    assert rows["every preference method wins >= 75% against the base (ties half)"]["holds"] is False  # ppo 74%


def test_missing_stages_are_not_measured_and_the_table_counts_seeds(tmp_path):
    a = write_run(tmp_path / "a", methods=GOOD, bon=BON)
    b = write_run(tmp_path / "b")  # no preference methods, no best-of-n
    rows = by_start(lessons.check_run(b))
    assert rows["DPO about as good as PPO"]["holds"] is None and rows["the reward model gets gamed"]["holds"] is None
    table = lessons.lesson_table({"seed 0": a, "seed 1": b})
    line = next(x for x in table.splitlines() if x.startswith("| SFT fixes the format"))
    assert "0% -> 90% (holds)" in line and line.endswith("| 2 of 2 |")
    line = next(x for x in table.splitlines() if x.startswith("| DPO about"))
    assert "(not measured)" in line and line.endswith("| 1 of 2 |")
