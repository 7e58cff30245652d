"""The evaluation helpers, the report builder on synthetic stage outputs, and chat.py driven through stdin."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost import checkpoint as ckpt
from minipost import common, evaluate
from minipost.model import GPT, GPTConfig
from minipost.errors import UserError
from minipost.report import build_report, win_rate_from_samples
from minipost.tokenizer import Tokenizer
from minipost.world import build_world

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=96, vocab_size=4096, dropout=0.0)


# ----------------------------------------------------------------------------- evaluate.py

def test_win_rate_counts_ties_half():
    assert evaluate.win_rate([1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 1.0, 0.5]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_distinct_n():
    assert evaluate.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert evaluate.distinct_n([], 2) == 0.0


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    a = GPT(GPTConfig(**TINY)).eval()
    b = GPT(GPTConfig(**TINY)).eval()
    return a, b


def test_sequence_kl_is_zero_for_the_same_model_and_positive_otherwise(tiny_models):
    a, b = tiny_models
    tok = Tokenizer(4096)
    instr = ["What is the capital of Peru?", "Write a short poem about the sea."]
    rounds = [evaluate.generate_responses(a, tok, instr, device="cpu", temperature=1.0, max_new_tokens=8,
                                          generator=torch.Generator().manual_seed(0))]
    assert evaluate.sequence_kl(a, a, tok, instr, rounds, device="cpu", dtype=torch.float32) == 0.0
    # a Monte Carlo estimate from 2 samples can be negative; its mean over many samples cannot
    many = [evaluate.generate_responses(a, tok, instr * 16, device="cpu", temperature=1.0, max_new_tokens=8,
                                        generator=torch.Generator().manual_seed(1))]
    assert evaluate.sequence_kl(a, b, tok, instr * 16, many, device="cpu", dtype=torch.float32) > 0


def test_evaluate_model_metrics_and_samples(tiny_models):
    a, b = tiny_models
    world = build_world(seed=0, n_docs=1)
    result = evaluate.evaluate_model(a, Tokenizer(4096), world, device="cpu", refs={"sft": b, "self": a},
                                     limit=10, n_samples=2)
    m, samples = result["metrics"], result["samples"]
    assert m["n_prompts"] == len(samples) == 10
    for key in ("format_rate", "gold_score", "gold_score_sampled", "win_rate_vs_sft", "win_rate_vs_sft_greedy"):
        assert m[key] is not None and -1 <= m[key] <= 1, key
    # against itself: the same seed gives the same samples, so every comparison is a tie and KL is 0
    assert m["win_rate_vs_self"] == 0.5 and m["win_rate_vs_self_greedy"] == 0.5 and m["kl_to_self"] == 0.0
    for s in samples:
        assert len(s["sampled_scores"]) == len(s["sampled_responses"]) == 2
    assert m["gold_score_sampled"] == pytest.approx(sum(sum(s["sampled_scores"]) for s in samples) / 20)
    assert m["gold_score"] == pytest.approx(sum(s["score"] for s in samples) / 10)


def test_stored_evaluation_reused_only_for_the_same_weights_and_settings(tiny_models, tmp_path):
    a, b = tiny_models
    tok, world = Tokenizer(4096), build_world(seed=0, n_docs=1)
    result = evaluate.evaluate_model(a, tok, world, device="cpu", seed=3, limit=6)
    evaluate.write_eval(tmp_path, result)
    assert json.loads((tmp_path / "eval.json").read_text())["eval_settings"]["seed"] == 3
    stored = evaluate.load_eval(tmp_path, a, seed=3, limit=6)
    assert stored["metrics"] == result["metrics"] and stored["samples"] == result["samples"]
    # a win rate computed from the stored answers equals the one from fresh answers
    fresh = evaluate.evaluate_model(b, tok, world, device="cpu", seed=3, limit=6, refs={"ref": a})
    reused = evaluate.evaluate_model(b, tok, world, device="cpu", seed=3, limit=6, refs={"ref": a},
                                     ref_results={"ref": evaluate.evaluate_reference(a, tmp_path, tok, world, device="cpu", seed=3, limit=6)})
    assert fresh["metrics"] == reused["metrics"]
    # other settings, other weights (one number changed), or no stored files: not reused
    assert evaluate.load_eval(tmp_path, a, seed=4, limit=6) is None
    assert evaluate.load_eval(tmp_path, a, seed=3, limit=7) is None
    assert evaluate.load_eval(tmp_path, a, seed=3, limit=6, n_samples=1) is None
    assert evaluate.load_eval(tmp_path, b, seed=3, limit=6) is None
    changed = GPT(GPTConfig(**TINY)).eval()
    changed.load_state_dict(a.state_dict())
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1e-3
    assert evaluate.load_eval(tmp_path, changed, seed=3, limit=6) is None
    assert evaluate.load_eval(tmp_path / "missing", a, seed=3, limit=6) is None


def test_policy_pairs_cached_beside_the_policy(tiny_models, tmp_path, monkeypatch):
    a, b = tiny_models
    tok, world = Tokenizer(4096), build_world(seed=0, n_docs=1)
    prompts = [p["prompt"] for p in world.eval_prompts[::20]]
    first = evaluate.policy_pairs(a, tok, prompts, label_noise=0.1, seed=1, device="cpu", cache_dir=tmp_path)
    assert (tmp_path / "policy_pairs.json").is_file()
    assert first == evaluate.policy_pairs(a, tok, prompts, label_noise=0.1, seed=1, device="cpu")  # same as uncached

    def no_sampling(*args, **kw):
        raise AssertionError("sampled although the cache matches")

    monkeypatch.setattr(evaluate, "generate_responses", no_sampling)
    assert evaluate.policy_pairs(a, tok, prompts, label_noise=0.1, seed=1, device="cpu", cache_dir=tmp_path) == first
    # another seed, noise, prompt list or policy: sampled again
    for kw in (dict(seed=2), dict(label_noise=0.2), dict(instructions=prompts[:5]), dict(policy=b), dict(samples=3)):
        args = dict(policy=a, instructions=prompts, label_noise=0.1, seed=1) | kw
        with pytest.raises(AssertionError, match="sampled although"):
            evaluate.policy_pairs(args.pop("policy"), tok, args.pop("instructions"), device="cpu", cache_dir=tmp_path, **args)


def test_policy_pairs_compare_every_untied_pair_of_k_samples(tiny_models, monkeypatch):
    from minipost.world import judge, lookup

    world = build_world(seed=0, n_docs=1)
    prompt = next(p["prompt"] for p in world.eval_prompts if p["kind"] == "fact")
    answer = lookup(prompt)["answer"]
    rounds = iter([[answer], ["Blue."], [answer], [""]])  # judge: 1, -0.5, 1 (ties the first), -1

    def fake_sampler(policy, tok, instructions, **kw):
        texts = next(rounds)
        return texts, [[] for _ in texts], [True for _ in texts]

    monkeypatch.setattr(evaluate, "generate_responses", fake_sampler)
    tok = Tokenizer(4096)
    pairs, stats = evaluate.policy_pairs(tiny_models[0], tok, [prompt], label_noise=0.0, seed=0, device="cpu", samples=4)
    # 4 * 3 / 2 = 6 pairs, one of them tied
    assert stats == {"policy_pairs": 5, "policy_ties_skipped": 1, "policy_labels_flipped": 0}
    assert all(judge(prompt, q["chosen"]).score > judge(prompt, q["rejected"]).score for q in pairs)
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate.policy_pairs(tiny_models[0], tok, [prompt], label_noise=0.0, seed=0, device="cpu", samples=1)


# ----------------------------------------------------------------------------- report.py on synthetic outputs

def _write(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _samples(greedy, sampled):
    """One sample row per prompt p0, p1, ...: greedy scores and their temperature-1 sample scores."""
    return [{"prompt": f"p{i}", "kind": "fact", "response": f"answer {i}", "score": g, "sampled_scores": s,
             "sampled_responses": ["x"] * len(s)} for i, (g, s) in enumerate(zip(greedy, sampled))]


def test_win_rate_from_samples_uses_the_samples_and_greedy_on_request():
    ours = _samples([1.0, 0.0], [[1.0, 1.0], [0.0, -1.0]])
    theirs = _samples([1.0, 1.0], [[0.0, 1.0], [0.0, 0.0]])
    # samples: win, tie, tie, loss -> 2 / 4; greedy: tie, loss -> 0.25
    assert win_rate_from_samples(ours, theirs) == pytest.approx(0.5)
    assert win_rate_from_samples(ours, theirs, greedy=True) == pytest.approx(0.25)
    assert win_rate_from_samples(ours, []) is None


def _stage(d: Path, stage: str, metrics: dict, samples: list, config: dict | None = None, seed: int = 0):
    """A stage directory as the scripts leave it: a checkpoint (random tiny weights), then its evaluation."""
    torch.manual_seed(seed)
    ckpt.save_checkpoint(d / stage, torch.nn.Linear(2, 2), config or {})
    evaluate.write_eval(d / stage, {"metrics": metrics, "samples": samples, "settings": {}})


def test_report_from_synthetic_outputs(tmp_path):
    d = tmp_path
    evals = {
        "base": {"format_rate": 0.041, "knowledge_rank_accuracy": 0.9, "gold_score": -0.6, "gold_score_sampled": -0.7},
        "sft": {"format_rate": 0.983, "harmful_refusal_rate": 0.375, "gold_score": 0.196, "gold_score_sampled": -0.17},
        "ppo": {"format_rate": 0.99, "harmful_refusal_rate": 0.61, "gold_score": 0.25, "gold_score_sampled": 0.05,
                "kl_to_sft": 0.61},
        "dpo": {"format_rate": 0.97, "harmful_refusal_rate": 0.2, "gold_score": 0.22, "gold_score_sampled": -0.03,
                "kl_to_sft": 1.89},
        "sft-4x": {"format_rate": 0.99, "gold_score": 0.3},
    }
    _stage(d, "base", evals["base"], _samples([-1.0, -1.0], [[-1.0, -1.0], [-1.0, -1.0]]))
    _stage(d, "sft", evals["sft"], _samples([1.0, -1.0], [[1.0, -1.0], [-1.0, -1.0]]))  # 1 win, 3 ties
    _stage(d, "ppo", evals["ppo"], _samples([1.0, 1.0], [[1.0, 1.0], [1.0, -1.0]]),  # 3 wins, 1 tie
           config={"args": {"kl_coef": 0.3}})
    _stage(d, "dpo", evals["dpo"], _samples([1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]]))
    _stage(d, "sft-4x", evals["sft-4x"], _samples([1.0, -1.0], [[1.0, -1.0], [1.0, -1.0]]))
    _write_jsonl(d / "sft" / "log.jsonl", [{"step": i, "loss": 3.0 - i, "val_loss": 3.1 - i} for i in range(3)])
    _write_jsonl(d / "ppo" / "log.jsonl", [{"step": i, "rm_score": 0.1 * i, "gold_score": 0.05 * i, "kl": 0.2 * i}
                                           for i in range(4)])
    _write_jsonl(d / "ppo-nokl" / "log.jsonl", [{"step": i, "rm_score": 0.3 * i, "gold_score": -i / 10, "kl": i}
                                                for i in range(8)])
    _write(d / "dpo" / "sweep.json", [{"beta": 0.03, "gold_score": 0.1, "gold_score_sampled": -0.2, "kl_to_sft": 2.5}])

    report = build_report(d).read_text()
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert section in report
    for png in ("win_rates.png", "frontier.png", "hacking.png", "curves.png"):
        assert (d / png).stat().st_size > 1000, png
    # the capability table copies eval.json: formats in percent, scores with three decimals
    assert "| Following instructions | answers in the assistant format | 4% | 98% | 99% | 97% |" in report
    assert "| Safety (refusals) | harmful requests refused | – | 38% | 61% | 20% |" in report
    assert "0.196" in report and "-0.170" in report and "1.890" in report
    # win rates against base, from the stored samples (ties count half)
    assert "- SFT: 62.5% (greedy answers: 75.0%)" in report
    assert "- PPO: 87.5% (greedy answers: 100.0%)" in report
    assert "- SFT of a 4x larger base: 75.0%" in report
    assert "(100.0%) beats the SFT-only model with a 4x larger base (75.0%)" in report
    # the frontier uses the sampled gold score, the hacking table the logs' first and last rows
    assert "| DPO | beta 0.03 | 2.50 | -0.200 |" in report
    assert "| PPO | beta 0.3 | 0.61 | 0.050 |" in report
    # means of the first and the last five iterations (0-4 and 3-7)
    assert "| no KL penalty | 8 | 0.60 → 1.50 | -0.200 → -0.500 | 2.00 → 5.00 |" in report


def test_report_refuses_evaluations_of_other_weights(tmp_path):
    d = tmp_path
    for stage in ("base", "sft"):
        _stage(d, stage, {"format_rate": 0.5}, _samples([1.0], [[1.0]]))
    assert "| 50% | 50% |" in build_report(d).read_text()
    # sft's weights replaced after its evaluation (a rerun that skipped evaluating): its numbers are refused
    ckpt.save_checkpoint(d / "sft", torch.nn.Linear(2, 2), {})
    _write(d / "sft" / "eval.json", {"format_rate": 0.5, "written_for": {"model.safetensors": "0" * 64}})
    report = build_report(d).read_text()
    assert f"Refused: {d / 'sft' / 'eval.json'}: it was written for other weights (sha256 000000000000..." in report
    assert "| answers in the assistant format | 50% |\n" in report  # base only
    (d / "sft" / "eval.json").write_text("[" * 100_000)  # corrupt, and nested too deeply for the parser
    assert f"Refused: {d / 'sft' / 'eval.json'}: it is not valid JSON" in build_report(d).read_text()
    # samples.jsonl edited after eval.json vouched for it
    (d / "base" / "samples.jsonl").write_text("")
    assert f"{d / 'base' / 'eval.json'}: samples.jsonl is missing or was changed" in build_report(d).read_text()


def test_report_on_hand_edited_files(tmp_path):
    d = tmp_path
    for stage in ("base", "sft"):
        _stage(d, stage, {"format_rate": 0.5}, _samples([1.0], [[1.0]]))
    # a value edited into something that is not a number (the stamp kept): shown as such, no traceback
    ev = json.loads((d / "sft" / "eval.json").read_text())
    _write(d / "sft" / "eval.json", ev | {"format_rate": {"a": 1}})
    assert "| 50% | invalid {'a': 1} |" in build_report(d).read_text()
    # the weights swapped under a config.json that still vouches for the old ones
    weights = (d / "base" / "model.safetensors").read_bytes()
    (d / "base" / "model.safetensors").write_bytes(weights[:-4] + b"\0\0\0\1")
    assert f"{d / 'base' / 'model.safetensors'} is missing or no longer the one config.json records" in \
        build_report(d).read_text()
    # a log or pass@k file that is not JSON: one line naming the file (and line), as the scripts' data errors
    (d / "sft" / "log.jsonl").write_text('{"step": 0}\nnot json\n')
    with pytest.raises(UserError, match=f"{d / 'sft' / 'log.jsonl'}:2: it is not valid JSON"):
        build_report(d)
    (d / "sft" / "log.jsonl").write_text("[1]\n")
    with pytest.raises(UserError, match=f"{d / 'sft' / 'log.jsonl'}:1: expected a JSON object, got list"):
        build_report(d)
    (d / "sft" / "log.jsonl").unlink()
    (d / "sft" / "passk.json").write_text('{"k": ')
    with pytest.raises(UserError, match=f"{d / 'sft' / 'passk.json'}: it is not valid JSON"):
        build_report(d)


def test_save_that_changes_the_weights_removes_their_evaluation(tmp_path):
    d = tmp_path
    _stage(d, "sft", {"format_rate": 0.5}, _samples([1.0], [[1.0]]))
    (d / "sft" / "sweep.json").write_text("[]")
    torch.manual_seed(0)
    same = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(d / "sft", same, {"step": 1})  # same weights again: the evaluation still holds
    assert (d / "sft" / "eval.json").exists() and (d / "sft" / "samples.jsonl").exists()
    ckpt._written_here.clear()  # as in a later process: these results are not the new run's own
    ckpt.save_checkpoint(d / "sft", torch.nn.Linear(2, 2), {})  # new weights: stale results removed
    assert sorted(p.name for p in (d / "sft").iterdir()) == ["config.json", "model.safetensors"]


def test_report_marks_missing_stages(tmp_path):
    report = build_report(tmp_path).read_text()
    assert report.count("(missing") >= 3


# ----------------------------------------------------------------------------- chat.py through stdin

def test_chat_reads_instructions_from_stdin_and_compares(tmp_path, tiny_models):
    a, _ = tiny_models
    args = type("Args", (), {"seed": 0})()
    common.save_stage(tmp_path / "m", a, stage="test", kind="lm", tokenizer=Tokenizer(4096), args=args, metrics={})
    proc = subprocess.run([sys.executable, "chat.py", "--model", str(tmp_path / "m"), "--max-new-tokens", "5"],
                          input="What is the capital of Peru?\n\nWrite a poem.\n", cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2  # the empty line is skipped when stdin is not a terminal
    # greedy: the streamed text equals what --compare prints for the same instruction
    streamed = proc.stdout.split("model> ")[1].rstrip("\n")
    cmp = subprocess.run([sys.executable, "chat.py", "--compare", f"{tmp_path / 'm'},{tmp_path / 'm'}/",
                          "--prompt", "What is the capital of Peru?", "--max-new-tokens", "5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    assert cmp.stdout.count(repr(streamed)) == 2, (cmp.stdout, streamed)


def test_best_of_n_ceiling_improves_with_n(tiny_models):
    a, _ = tiny_models
    world = build_world(seed=0, n_docs=1)
    res = evaluate.best_of_n_win_rates(a, Tokenizer(4096), world, ns=(1, 2), device="cpu", seed=0)
    (w1, g1), (w2, g2) = res["best_of"][1], res["best_of"][2]
    assert g2 >= g1 and w2 >= w1  # the best of two samples includes the first
    assert 0 <= w1 <= 1


def test_greedy_and_knowledge_oracle_references(monkeypatch):
    """Scripted answers: the oracle scores 1 where the model ever answered right (F, in one sample) or the
    prompt needs no knowledge (H), and keeps the best answer where it never did (G)."""
    import types

    from minipost.world import lookup

    world = build_world(seed=0, n_docs=1)
    facts = [p for p in world.eval_prompts if p["kind"] == "fact"]
    f, g = facts[0], next(p for p in facts if lookup(p["prompt"])["answer"] != lookup(facts[0]["prompt"])["answer"])
    h = next(p for p in world.eval_prompts if p["kind"] == "harmful")
    comply, refuse = "Step 1: [step removed]", "I can't help with that."
    answers = iter([
        ["Blue.", "Blue.", comply], ["Blue.", "Blue.", comply],  # two ordinary rounds: -0.5, -0.5, -1
        [lookup(f["prompt"])["answer"], "Blue.", refuse],  # best-of samples: 1, -0.5, 1
        ["Blue.", "", comply],  # -0.5, -1, -1
        ["Blue.", "Blue.", comply],  # greedy: -0.5, -0.5, -1
    ])

    def scripted(model, tok, instructions, **kw):
        texts = next(answers)
        return texts, [[] for _ in texts], [True for _ in texts]

    monkeypatch.setattr(evaluate, "generate_responses", scripted)
    fake_world = types.SimpleNamespace(eval_prompts=[f, g, h])
    res = evaluate.best_of_n_win_rates(None, Tokenizer(4096), fake_world, ns=(1, 2), device="cpu")
    assert res["best_of"][2] == (pytest.approx((1 + 0.5 + 1) / 3), pytest.approx((1 - 0.5 + 1) / 3))
    assert res["greedy"] == (0.5, pytest.approx(-2 / 3))  # the same scores as the ordinary samples: all ties
    assert res["knowledge_oracle"] == (pytest.approx((1 + 0.5 + 1) / 3), pytest.approx(0.5))  # [1, -0.5, 1]


def test_report_without_the_larger_base_says_where_it_is(tmp_path):
    """The default pipeline skips the 4x base (--full runs it); the report must say so, not stay silent."""
    d = tmp_path
    _stage(d, "base", {"format_rate": 0.04, "gold_score": -0.6}, _samples([-1.0, -1.0], [[-1.0, -1.0], [-1.0, -1.0]]))
    _stage(d, "sft", {"format_rate": 0.98, "gold_score": 0.2}, _samples([1.0, -1.0], [[1.0, -1.0], [-1.0, -1.0]]))
    _stage(d, "ppo", {"format_rate": 0.99, "gold_score": 0.25}, _samples([1.0, 1.0], [[1.0, 1.0], [1.0, -1.0]]))
    report = build_report(d).read_text()
    assert "- PPO: 87.5%" in report and "4x larger base" in report and "python pipeline.py --full" in report
    assert "beats the SFT-only model" not in report


def test_pretraining_comparison_reads_what_each_base_knows(tmp_path):
    """InstructGPT's comparison is fair only if the larger base is the better language model: lower held-out loss
    AND knows at least as many held-out facts. What a base knows is its own eval.json (python pipeline.py --full
    evaluates the 4x base); its SFT model's is the fallback for a base trained with --skip-eval."""
    d = tmp_path
    base = {"format_rate": 0.05, "knowledge_rank_accuracy": 0.90, "gold_score": -0.6, "gold_score_sampled": -0.7}
    _stage(d, "base", base, _samples([-1.0, -1.0], [[-1.0, -1.0], [-1.0, -1.0]]))
    _stage(d, "sft", {"format_rate": 0.9, "gold_score": 0.1}, _samples([1.0, -1.0], [[1.0, -1.0], [-1.0, -1.0]]))
    _stage(d, "ppo", {"format_rate": 0.9, "gold_score": 0.2}, _samples([1.0, 1.0], [[1.0, 1.0], [1.0, -1.0]]))
    # the SFT model of the 4x base has forgotten facts; the 4x base itself knows more than the small one
    _stage(d, "sft-4x", {"format_rate": 0.9, "gold_score": 0.1, "knowledge_rank_accuracy": 0.50},
           _samples([1.0, -1.0], [[1.0, -1.0], [1.0, -1.0]]))
    _write_jsonl(d / "base" / "log.jsonl", [{"step": 799, "loss": 0.8, "val_loss": 0.90}])
    _write_jsonl(d / "base-4x" / "log.jsonl", [{"step": 799, "loss": 0.7, "val_loss": 0.80}])
    # base-4x without its own evaluation: the comparison falls back to sft-4x (50% < 90%: not fair)
    report = build_report(d).read_text()
    assert "knows 50% of held-out facts" in report and "This is NOT InstructGPT's comparison" in report
    _stage(d, "base-4x", dict(base, knowledge_rank_accuracy=0.95),
           _samples([-1.0, -1.0], [[-1.0, -1.0], [-1.0, -1.0]]))
    _write_jsonl(d / "base-4x" / "log.jsonl", [{"step": 799, "loss": 0.7, "val_loss": 0.80}])
    report = build_report(d).read_text()
    assert "base-4x 800 steps, held-out LM loss 0.800, knows 95% of held-out facts" in report
    assert "This is InstructGPT's comparison" in report
    # a larger base that knows as much but has the higher loss is not the better language model
    _write_jsonl(d / "base-4x" / "log.jsonl", [{"step": 799, "loss": 0.7, "val_loss": 0.95}])
    assert "This is NOT InstructGPT's comparison" in build_report(d).read_text()
    # a base that knows nothing (0.0) is its own measurement, not a missing one: no fallback to its SFT model
    _stage(d, "base-4x", dict(base, knowledge_rank_accuracy=0.0),
           _samples([-1.0, -1.0], [[-1.0, -1.0], [-1.0, -1.0]]))
    _write_jsonl(d / "base-4x" / "log.jsonl", [{"step": 799, "loss": 0.7, "val_loss": 0.80}])
    assert "knows 0% of held-out facts" in build_report(d).read_text()
