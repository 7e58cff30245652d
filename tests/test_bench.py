"""bench/: the parts of the TRL comparison and the pipeline profiler that could silently measure the wrong thing."""

import cProfile
import pstats
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import profile_pipeline  # noqa: E402
import train_grpo  # noqa: E402
import trl_grpo  # noqa: E402
import trl_peer  # noqa: E402
from minipost import common, data  # noqa: E402
from minipost.model import GPTScalar, GPTConfig  # noqa: E402


def test_sft_rows_reach_trl_in_the_scripts_micro_batches():
    """TRL reads the dataset sequentially, 16 rows per micro-batch: its micro-batches must be train_sft.py's length
    groups, and its completion mask the response tokens (EOS included)."""
    pytest.importorskip("datasets")
    import datasets

    g = torch.Generator().manual_seed(0)
    rows = [(list(range(1, 3 + n)), 2) for n in torch.randint(1, 40, (40,), generator=g).tolist()]
    batches = trl_peer.step_batches(rows, 32, 2, seed=1)
    hp = trl_peer.script_defaults("sft")
    ds = trl_peer.trl_dataset("sft", batches, hp, datasets)
    expected = [ex for b in batches for grp in trl_peer.sft_order(b, hp.micro_batch_size) for ex in grp]
    assert ds["input_ids"] == [ids for ids, _ in expected]
    for (ids, n), mask in zip(expected, ds["completion_mask"]):
        assert mask == [0] * n + [1] * (len(ids) - n)
    # each micro-batch of 16 is one of the script's groups: shortest first within the step
    first = ds["input_ids"][:16]
    assert max(map(len, first)) <= min(map(len, ds["input_ids"][16:32]))


def test_reward_model_copy_scores_like_minipost():
    """The transformers copy of the RM picks the reward at the real EOS (padding is id V-2, not EOS) and gives the
    same reward as GPTScalar.score, on right-padded rows of different lengths."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
    rm = GPTScalar(common.dropout_off(cfg))
    hf = trl_peer.hf_model("rm", rm)
    eos = cfg.vocab_size - 1
    rows = [([5, 6, 7, eos], [9, 10, eos], 2, None), ([5, 6, 7, 8, 9, 10, eos], [11, eos], 3, None)]
    diff = trl_peer.max_output_diff("rm", rm, hf, rows, eos, cfg.vocab_size - 2, torch.device("cpu"))
    assert diff < 1e-5
    # and the check can fail: a different head gives different rewards
    with torch.no_grad():
        hf.score.weight[0, 0] += 1.0  # (a constant added to every weight would cancel: ln_f output has mean 0)
    assert trl_peer.max_output_diff("rm", rm, hf, rows, eos, cfg.vocab_size - 2, torch.device("cpu")) > 1e-3


def test_step_batches_draw_like_the_scripts():
    """The scripts draw each step's rows with torch.randint on a seeded generator; so must the benchmark."""
    rows = list(range(100))
    g = torch.Generator().manual_seed(7)
    expected = [torch.randint(0, 100, (8,), generator=g).tolist() for _ in range(3)]
    assert trl_peer.step_batches(rows, 8, 3, seed=7) == expected


def test_grpo_prompts_reach_trl_as_minipost_ids():
    """TRL tokenizes prompts itself: the text a prompt is handed over as must tokenize back to minipost's ids
    (the chat template's, EOS included) with no special tokens added."""
    pytest.importorskip("transformers")
    from minipost.tokenizer import Tokenizer, chat_prompt

    tok = Tokenizer(4096)
    tok_hf = trl_grpo.hf_prompt_tokenizer(tok.vocab_size, tok.eos_id)
    ids = [tok.encode(chat_prompt(x)) for x in ("How much is 9 plus 9?", "Which city is the capital of Ireland?")]
    ids.append([5, tok.eos_id, 17, 0, tok.vocab_size - 2])
    texts = [trl_grpo.ids_as_text(x, tok.eos_id) for x in ids]
    assert tok_hf(text=texts)["input_ids"] == ids


def test_trl_reward_function_is_the_verifier():
    """The TRL reward function scores TRL's completion ids (cut after the first EOS, which TRL keeps) as
    train_grpo.verifier_reward scores minipost's (text without EOS, ended flag): right, wrong, no EOS."""
    from minipost.tokenizer import Tokenizer

    tok = Tokenizer(4096)
    x = "Which city is the capital of Ireland?"
    right, wrong = tok.encode("Dublin"), tok.encode("Paris")
    completions = [right + [tok.eos_id], wrong + [tok.eos_id], right, []]
    got = trl_grpo.trl_verifier(tok)(prompts=None, completions=None, completion_ids=completions, instruction=[x] * 4)
    assert got == [train_grpo.VERIFIER_CORRECT, train_grpo.VERIFIER_WRONG, train_grpo.VERIFIER_NO_ANSWER,
                   train_grpo.VERIFIER_NO_ANSWER]
    assert got[:3] == [train_grpo.verifier_reward(x, tok.decode(c), e) for c, e in ((right, True), (wrong, True),
                                                                                    (right, False))]


def test_grpo_iteration_prompts_draw_like_the_script():
    """train_grpo.py picks each step's prompts with randint on a generator seeded with --seed; so must the benchmark."""
    hp = trl_grpo.grpo_settings(quick=False)
    pool = [f"q{i}" for i in range(50)]
    g = torch.Generator().manual_seed(hp.seed)
    expected = [[pool[i] for i in torch.randint(0, 50, (hp.prompts_per_step,), generator=g).tolist()] for _ in range(3)]
    assert trl_grpo.iteration_prompts(pool, hp, 3) == expected


def test_grpo_benchmark_iteration_runs_train_grpos_functions():
    """The benchmark repeats train_grpo.main's loop from the script's functions: one iteration on a tiny model must
    run and train (a changed function signature in train_grpo.py breaks this, not a silent benchmark)."""
    from minipost.model import GPT
    from minipost.tokenizer import Tokenizer

    hp = trl_grpo.grpo_settings(quick=True)
    hp.prompts_per_step, hp.group_size, hp.minibatch_size, hp.max_new_tokens = 2, 2, 4, 4
    torch.manual_seed(0)
    tok = Tokenizer(512)
    policy = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=512, dropout=0.0))
    ref = GPT(policy.config)
    ref.load_state_dict(policy.state_dict())
    out = trl_grpo.minipost_iterator(policy, common.frozen(ref), tok, hp, "cpu", torch.float32)(
        ["What is the capital of France?", "Add 2 and 3."])
    phases = ("generation", "scoring", "update")
    assert all(out[k] > 0 for k in phases), out
    assert out["total"] == pytest.approx(sum(out[k] for k in phases), rel=1e-6)  # the split covers the iteration
    assert out["scoring"] == pytest.approx(out["score_reward"] + out["score_logp"] + out["score_ref"], rel=1e-6)
    assert -0.5 <= out["reward"] <= 1.0 and 1 <= out["max_length"] <= hp.max_new_tokens + 1


def _leaf_a():
    return sum(i * i for i in range(20000))


def _leaf_b():
    return sum(i for i in range(60000))


@torch.no_grad()
def _wrapped():
    return _leaf_a()


def main():
    _leaf_a()
    _leaf_b()
    _wrapped()


def test_breakdown_splits_main_into_its_calls(tmp_path):
    """phase_seconds: main's direct calls with the seconds spent in them from main (disjoint: they sum to at most
    main's time), the no_grad wrapper named as such; and the named functions' cumulative seconds over every call."""
    prof = cProfile.Profile()
    prof.runcall(main)
    path = tmp_path / "x.prof"
    prof.dump_stats(str(path))
    phases = profile_pipeline.phase_seconds(path, "test_bench.py")
    direct = phases["main"]
    assert set(direct) == {"test_bench.py:_leaf_a", "test_bench.py:_leaf_b", profile_pipeline.WRAPPERS["_contextlib.py:decorate_context"]}
    assert sum(direct.values()) <= phases["main_s"] * 1.001
    stats = pstats.Stats(str(path)).stats
    leaf_a = next(v for k, v in stats.items() if k[2] == "_leaf_a")
    leaf_b = next(v for k, v in stats.items() if k[2] == "_leaf_b")
    assert direct["test_bench.py:_leaf_b"] == pytest.approx(leaf_b[3])
    assert leaf_a[1] == 2 and direct["test_bench.py:_leaf_a"] < leaf_a[3]  # the direct call only, not the wrapped one
