"""Export to Hugging Face transformers (minipost/export.py): the files, bad input, the round trip back into minipost
(no transformers needed), and -- where transformers is installed -- the same logits, greedy answers, tokens, chat
prompts and reward scores from the exported directory as from minipost."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost import checkpoint as ckpt
from minipost import common, errors, export, lora
from minipost.data import render_conversation
from minipost.model import GPT, GPTConfig, GPTScalar
from minipost.tokenizer import Tokenizer, chat_prompt
from minipost.world import build_world

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=4096)  # the tiny preset's vocabulary
EOS = 4095


def save(path, model, kind="lm", args=None, vocab=4096):
    common.save_stage(path, model, stage="rm" if kind == "scalar" else "sft", kind=kind, tokenizer=Tokenizer(vocab),
                      args=args, metrics={})
    return str(path)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """lm/ (tiny GPT), rm/ (GPTScalar with a head bias, shift and scale), lora/ (adapters only, on lm/), and the
    exports of each (lm_hf/, rm_hf/, lora_hf/)."""
    d = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    save(d / "lm", GPT(GPTConfig(**TINY)))
    rm = GPTScalar(GPTConfig(**TINY))
    with torch.no_grad():
        rm.head.bias.fill_(0.7)
        rm.reward_shift.fill_(-1.3)
        rm.reward_scale.fill_(2.5)
    save(d / "rm", rm, kind="scalar")
    adapted = lora.apply_lora(common.load_model(str(d / "lm"))[0], rank=4, alpha=8.0, targets=["attn", "mlp"])
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape) * 0.1)
    args = argparse.Namespace(lora_rank=4, lora_alpha=8.0, lora_targets=["attn", "mlp"], lora_save="adapters",
                                     init=str(d / "lm"))
    save(d / "lora", adapted, args=args)
    for name in ("lm", "rm", "lora"):
        export.export(str(d / name), d / f"{name}_hf")
    return d


@pytest.fixture(scope="module")
def world():
    return build_world(seed=0, n_docs=300, n_sft=200, n_pairs=60, n_heldout_pairs=10)


def texts_of(world) -> list[str]:
    """The world's text: corpus documents, instructions, responses, both sides of preference pairs."""
    return ([*world.corpus, *(p["prompt"] for p in world.eval_prompts), *(d["response"] for d in world.sft_demos),
             *(p[k] for p in world.preference_pairs for k in ("chosen", "rejected"))])


# -----------------------------------------------------------------------------
# Without transformers: the files, the round trip, bad input


def test_cli_writes_the_files_transformers_reads(d, tmp_path):
    """`python -m minipost.export` as a user runs it: GPT-2's config fields, Conv1D (in, out) weights, a tokenizer
    whose EOS is the model's last id, the chat template, generation settings."""
    r = subprocess.run([sys.executable, "-m", "minipost.export", str(d / "lm"), str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "GPT2LMHeadModel" in r.stdout and "AutoModelForCausalLM" in r.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "merges.txt", "model.safetensors", "special_tokens_map.json",
         "tokenizer.json", "tokenizer_config.json", "vocab.json"])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["vocab_size"], config["n_positions"], config["n_embd"], config["n_layer"], config["n_head"]) == \
        (4096, 128, 64, 2, 4)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["eos_token_id"] == config["bos_token_id"] == config["pad_token_id"] == EOS
    assert json.loads((out / "generation_config.json").read_text()) == \
        {"bos_token_id": EOS, "eos_token_id": EOS, "pad_token_id": EOS}
    tensors, meta = ckpt.read_safetensors(out / "model.safetensors")
    assert meta == {"format": "pt"} and "lm_head.weight" not in tensors  # tied to wte
    ours = common.load_model(str(d / "lm"))[0].state_dict()
    # nn.Linear (out, in) -> Conv1D (in, out): c_attn (64 -> 192) is stored (64, 192)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)
    assert torch.equal(tensors["transformer.h.1.attn.c_proj.weight"], ours["transformer.h.1.attn.c_proj.weight"].t())
    assert torch.equal(tensors["transformer.wte.weight"], ours["transformer.wte.weight"])
    assert len(tensors) == 4 + 2 * 12  # wte, wpe, ln_f (2); per block 6 weights + 6 biases
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 4096 and vocab["<|endoftext|>"] == EOS and vocab["Ġthe"] == 262 and vocab["!"] == 0
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1:4] == ["Ġ t", "Ġ a", "h e"]  # GPT-2's first merges
    assert len(merges) - 1 == 4095 - 256  # one merge per multi-byte token
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == tok_config["pad_token"] == "<|endoftext|>"
    assert tok_config["model_max_length"] == 128 and "chat_template" in tok_config


def test_merges_rebuild_every_token_of_the_vocabulary():
    """Hugging Face's BPE applies merges by priority. Applied to the bytes of any token, the rebuilt merge list
    must give back exactly that token -- so looking a whole word up (tiktoken) and merging it (HF) agree."""
    vocab, merges = export.bpe_files(EOS)
    priority = {pair: i for i, pair in enumerate(merges)}
    for spelled, token_id in vocab.items():
        if token_id == EOS:
            continue
        parts = list(spelled)  # one character per byte
        while len(parts) > 1:
            pairs = [(priority.get((a, b), len(priority)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best == len(priority):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        assert parts == [spelled], (spelled, parts)
    assert export.spell(b" \n") == "ĠĊ" and len(set(export.byte_to_unicode().values())) == 256


def test_chat_template_is_minipost_rendering_without_transformers():
    """The Jinja template, rendered with jinja2 as transformers does: minipost's prompt, single- and multi-turn."""
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(export.chat_template())
    conversations = [
        [{"role": "user", "content": "What is the capital of Peru?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye\n\nnow"}],
    ]
    for messages in conversations:
        text = template.render(messages=messages, add_generation_prompt=True, eos_token="<|endoftext|>")
        assert text == render_conversation(messages)
    assert render_conversation(conversations[0]) == chat_prompt("What is the capital of Peru?")
    # a conversation that ends with the answer: the SFT example, EOS included
    full = conversations[0] + [{"role": "assistant", "content": "Lima."}]
    assert template.render(messages=full, eos_token="<|endoftext|>") == chat_prompt(full[0]["content"]) + \
        "Lima.<|endoftext|>"


def test_language_models_load_back_bitwise(d):
    """export -> minipost's --init OUT_DIR (common.load_model): every tensor bitwise the one exported, the same
    tokenizer. LoRA adapters-only checkpoints export their merged weights W + (alpha/r) B A."""
    for name in ("lm", "lora"):
        original, tok, _ = common.load_model(str(d / name))
        expected = lora.merged_state_dict(original) if lora.has_adapters(original) else original.state_dict()
        loaded, tok2, config = common.load_model(str(d / f"{name}_hf"))
        assert config["kind"] == "lm" and (tok2.vocab_size, tok2.eos_id) == (tok.vocab_size, tok.eos_id)
        got = loaded.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    base = common.load_model(str(d / "lm"))[0].state_dict()
    assert not torch.equal(got["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])


def test_reward_model_loads_back_with_the_same_scores(d, tmp_path):
    """The folded reward model (bias and normalization inside the weights) scores what the original scores, on a
    right- and a left-padded batch; exporting it again writes the same bytes."""
    original = common.load_model(str(d / "rm"), kind=None)[0].eval()
    loaded, tok, config = common.load_model(str(d / "rm_hf"), kind=None)
    assert isinstance(loaded, GPTScalar) and config["kind"] == "scalar" and tok.eos_id == EOS
    assert loaded.config.vocab_size == 4096  # the pad row is dropped again
    assert float(loaded.head.bias.detach()) == 0 and float(loaded.reward_shift) == 0 and float(loaded.reward_scale) == 1
    ids = torch.tensor([[10, 20, 30, EOS, EOS, EOS], [40, 50, 60, 70, 80, EOS]])  # t.., EOS, then EOS padding
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    left_ids = torch.tensor([[EOS, EOS, 10, 20, 30, EOS], [40, 50, 60, 70, 80, EOS]])
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = original.score(ids, right)
        assert want.abs().min() > 0.1  # shift, scale and bias matter: a dropped constant would show
        torch.testing.assert_close(loaded.eval().score(ids, right), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.score(left_ids, left), want, atol=1e-5, rtol=1e-5)
    export.export(str(d / "rm_hf"), tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (d / "rm_hf" / "model.safetensors").read_bytes()
    with pytest.raises(ckpt.CheckpointError, match="holds a scalar model, a language model is needed"):
        common.load_model(str(d / "rm_hf"))  # --init of a policy


def test_fold_reward_head_math():
    """score.weight . h + (what ln_f's new bias adds) = (head(h) - shift) / scale for any h; a zero head with a
    nonzero constant cannot be expressed and is refused."""
    g = torch.Generator().manual_seed(0)
    w, b, beta = torch.randn(1, 8, generator=g), torch.tensor([0.3]), torch.randn(8, generator=g)
    shift, scale = torch.tensor(-2.0), torch.tensor(0.5)
    score_w, new_beta = export.fold_reward_head(w, b, shift, scale, beta)
    n = torch.randn(5, 8, generator=g)  # ln_f's normalized input times its gain: h = n + beta
    torch.testing.assert_close((n + new_beta) @ score_w.t(), ((n + beta) @ w.t() + b - shift) / scale)
    with pytest.raises(errors.UserError, match="all zeros"):
        export.fold_reward_head(torch.zeros(1, 8), b, shift, scale, beta)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        errors.run(export.main, [str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def test_bad_input_gets_one_line(d, tmp_path, capsys):
    """Missing or corrupt checkpoints name the path; a non-empty OUT_DIR needs --overwrite; a checkpoint is never
    overwritten by an export; --overwrite leaves no file of the earlier export that contradicts the new one."""
    code, err = run_cli([tmp_path / "nothing", tmp_path / "o1"], capsys)
    assert code == 1 and err.count("\n") == 1 and f"no checkpoint at {tmp_path / 'nothing'}" in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in ("config.json", "model.safetensors"):
        (corrupt / f).write_bytes((d / "lm" / f).read_bytes())
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = run_cli([corrupt, tmp_path / "o2"], capsys)
    assert code == 1 and err.count("\n") == 1 and str(corrupt / "model.safetensors") in err
    assert not (tmp_path / "o2").exists()
    code, err = run_cli([d / "lm", d / "lm"], capsys)
    assert code == 1 and "is the checkpoint being exported" in err
    code, err = run_cli([d / "lm", d / "rm", "--overwrite"], capsys)
    assert code == 1 and f"{d / 'rm'} holds a minipost checkpoint" in err
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_cli([d / "lm", out], capsys)
    assert code == 1 and "is not empty; pass --overwrite" in err and not (out / "config.json").exists()
    assert export.main([str(d / "lm"), str(out), "--overwrite"]) is None
    assert (out / "generation_config.json").exists()
    export.main([str(d / "rm"), str(out), "--overwrite"])  # a reward model over the language model's export
    assert not (out / "generation_config.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


# -----------------------------------------------------------------------------
# With transformers: the exported directory computes what minipost computes


def hf_load(path, kind="lm"):
    tr = pytest.importorskip("transformers")
    tr.logging.set_verbosity_error()
    auto = tr.AutoModelForCausalLM if kind == "lm" else tr.AutoModelForSequenceClassification
    return auto.from_pretrained(str(path)).eval(), tr.AutoTokenizer.from_pretrained(str(path))


def check_language_model(ckpt_dir, out_dir, world, n_prompts=6, max_new_tokens=24):
    """Logits (1e-4), greedy answers one by one and left-padded as a batch, tokens of the world's text."""
    hf, hf_tok = hf_load(out_dir)
    ours, tok, _ = common.load_model(str(ckpt_dir))
    ours.eval()
    prompts = [p["prompt"] for p in world.eval_prompts[:: len(world.eval_prompts) // n_prompts][:n_prompts]]
    ids = [tok.encode(chat_prompt(p)) for p in prompts]
    with torch.no_grad():
        x = torch.tensor([ids[0]])
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-4, rtol=1e-4)
        for prompt, row in zip(prompts, ids):  # one by one: HF's chat template -> its tokens -> its generate
            x = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
            assert x[0].tolist() == row
            want = ours.generate(x, max_new_tokens, temperature=0, eos_token_id=tok.eos_id)
            got = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens)
            assert got.tolist() == want.tolist()
        batch = hf_tok([chat_prompt(p) for p in prompts], padding=True, return_tensors="pt")  # left-padded with EOS
        assert hf_tok.padding_side == "left" and batch["input_ids"][batch["attention_mask"] == 0].eq(tok.eos_id).all()
        got = hf.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
        want = ours.generate(batch["input_ids"], max_new_tokens, temperature=0, eos_token_id=tok.eos_id,
                             attention_mask=batch["attention_mask"])
        assert got.tolist() == want.tolist()
    check_tokens(hf_tok, tok, texts_of(world))


def check_tokens(hf_tok, tok, texts):
    for text in texts:
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids + [tok.eos_id], skip_special_tokens=True) == tok.decode(ids) == text


def test_tiny_language_model_in_transformers(d, world):
    check_language_model(d / "lm", d / "lm_hf", world)
    check_language_model(d / "lora", d / "lora_hf", world, n_prompts=2)


def test_tokenizer_and_chat_template_in_transformers(d, world):
    """Special ids; the chat template equals minipost's prompt for every world prompt, and multi-turn; an SFT
    example (template with the answer) tokenizes to prompt ids + response ids + EOS. (The world's documents,
    prompts and answers are tokenized in check_language_model.)"""
    _, hf_tok = hf_load(d / "lm_hf")
    tok = Tokenizer(4096)
    assert (hf_tok.eos_token_id, hf_tok.bos_token_id, hf_tok.pad_token_id, len(hf_tok)) == (EOS, EOS, EOS, 4096)
    assert hf_tok("The dog")["input_ids"] == [464, 3290]  # GPT-2's ids, no BOS prepended
    for p in world.eval_prompts + world.rl_prompts[:200]:
        messages = [{"role": "user", "content": p["prompt"]}]
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == chat_prompt(p["prompt"])
    for demo in world.sft_demos:
        messages = [{"role": "user", "content": demo["prompt"]}, {"role": "assistant", "content": demo["response"]}]
        got = hf_tok.apply_chat_template(messages, return_dict=True)["input_ids"]
        prompt_ids, response_ids = tok.encode_example(chat_prompt(demo["prompt"]), demo["response"])
        assert list(got) == prompt_ids + response_ids
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "What is 2 plus 3?"}]
    assert hf_tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == render_conversation(turns)
    # Documented difference: a literal "<|endoftext|>" in text is the EOS token to Hugging Face (minipost: ordinary
    # text) unless the caller passes split_special_tokens=True
    assert hf_tok("a<|endoftext|>")["input_ids"] == [64, EOS]
    assert hf_tok("a<|endoftext|>", split_special_tokens=True)["input_ids"] == tok.encode("a<|endoftext|>")


def test_reward_model_in_transformers(d, world):
    """Pitfall 14: GPT2ForSequenceClassification reads "the last token" as the rightmost non-pad id. With pad = EOS
    it would read the token before the EOS; the export's own pad id makes its scores minipost's, padded batch."""
    hf, hf_tok = hf_load(d / "rm_hf", kind="scalar")
    rm, tok, _ = common.load_model(str(d / "rm"), kind=None)
    rm.eval()
    pairs = world.preference_pairs[:6]
    texts = [chat_prompt(p["prompt"]) + p[k] + "<|endoftext|>" for p in pairs for k in ("chosen", "rejected")]
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    assert hf_tok.padding_side == "right" and hf_tok.pad_token_id == 4096 and batch["attention_mask"].eq(0).any()
    with torch.no_grad():
        want = torch.stack([rm.score(torch.tensor([ids]), torch.ones(1, len(ids)))[0] for ids in
                            (sum(tok.encode_example(chat_prompt(p["prompt"]), p[k]), []) for p in pairs
                             for k in ("chosen", "rejected"))])
        got = hf(**batch).logits.squeeze(-1)  # (B,)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # what the export avoids: the same weights with pad = EOS score the token before each EOS
        hf.config.pad_token_id = EOS
        eos_padded = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, EOS)
        wrong = hf(input_ids=eos_padded, attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        assert (wrong - want).abs().min() > 1e-3


def test_a_transformers_reward_model_loads_into_minipost(tmp_path):
    """Any one-label GPT2ForSequenceClassification (here random, with pad = EOS as usual) loads as a GPTScalar that
    scores the EOS that ends each row, read from the mask; Hugging Face's own pooling reads the token before it."""
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, vocab_size=512, num_labels=1,
                        pad_token_id=511, eos_token_id=511, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    hf = tr.GPT2ForSequenceClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hf_rm")
    rm, tok, config = common.load_model(str(tmp_path / "hf_rm"), kind="scalar")
    assert isinstance(rm, GPTScalar) and config["kind"] == "scalar" and tok.eos_id == 511
    rows = [[5, 6, 7, 511], [8, 9, 511]]  # each ends with its EOS
    with torch.no_grad():
        at_eos = torch.cat([hf.score(hf.transformer(torch.tensor([r])).last_hidden_state)[:, -1, 0] for r in rows])
        ids = torch.tensor([rows[0], rows[1] + [511]])
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        torch.testing.assert_close(rm.eval().score(ids, mask), at_eos, atol=1e-5, rtol=1e-5)
        one_early = torch.cat([hf(torch.tensor([r])).logits[:, 0] for r in rows])  # the rightmost non-pad id
        assert (one_early - at_eos).abs().min() > 1e-3


def test_gpt2_shaped_model_in_transformers(tmp_path, world):
    """GPT-2's width, heads, context and full 50,257-token vocabulary (EOS 50256), with 2 of its 12 layers: the
    exporter's code per layer is the same for every layer, and 12 would triple the time of this test."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=12, n_embd=768, block_size=1024, vocab_size=50257))
    save(tmp_path / "gpt2", model, vocab=50257)
    del model
    export.export(str(tmp_path / "gpt2"), tmp_path / "gpt2_hf")
    config = json.loads((tmp_path / "gpt2_hf" / "config.json").read_text())
    assert (config["vocab_size"], config["n_positions"], config["eos_token_id"]) == (50257, 1024, 50256)
    check_language_model(tmp_path / "gpt2", tmp_path / "gpt2_hf", world, n_prompts=2, max_new_tokens=8)
