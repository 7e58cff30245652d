"""GPT-2 model: attention paths, padding, KV cache, sampling, scalar head, weight import."""

import math

import pytest
import torch
import torch.nn.functional as F

from minipost.model import GPT, GPTConfig, GPTScalar, config_from_preset, filter_logits, sample_next


def tiny(fused=False, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=97, n_layer=2, n_head=4, n_embd=32, fused_attn=fused, **kw)
    return GPT(cfg).eval()


def test_presets_have_official_shapes():
    assert config_from_preset("gpt2").n_embd == 768
    m = GPT(config_from_preset("tiny"))
    assert 4.0e6 < m.num_params() < 4.5e6  # the 4.24M-parameter tiny preset
    assert m.lm_head.weight is m.transformer.wte.weight
    with pytest.raises(ValueError, match="unknown preset"):
        config_from_preset("gpt5")


def test_fused_attention_equals_hand_written():
    manual = tiny(fused=False)
    fused = tiny(fused=True)
    fused.load_state_dict(manual.state_dict())
    idx = torch.randint(0, 97, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :7] = 0  # left padding
    mask[2, 15:] = 0  # right padding
    torch.testing.assert_close(fused(idx, mask), manual(idx, mask), atol=1e-5, rtol=1e-5)


def test_left_padding_leaves_logits_unchanged():
    m = tiny()
    idx = torch.randint(0, 97, (1, 10))
    ref = m(idx)  # (1, 10, V)
    pads = 32
    padded = torch.cat([torch.full((1, pads), 96), idx], dim=1)
    mask = torch.cat([torch.zeros(1, pads, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    out = m(padded, mask)
    torch.testing.assert_close(out[:, pads:], ref, atol=1e-5, rtol=1e-5)
    # the pad rows are fully masked except for themselves: finite, never NaN (docs/pitfalls.md, pitfall 3)
    assert torch.isfinite(out).all()


def test_fully_padded_row_is_finite_in_both_paths():
    for fused in (False, True):
        m = tiny(fused=fused)
        idx = torch.randint(0, 97, (2, 8))
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[0] = 0
        assert torch.isfinite(m(idx, mask)).all()


def test_cached_decoding_equals_full_forward():
    m = tiny()
    idx = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0
    full = m(idx, mask)  # (2, 12, V)
    from minipost.model import KVCache

    cache = KVCache(m.config, 2, 12, "cpu", torch.float32)
    pieces = [m(idx[:, :5], mask[:, :5], cache)]
    for t in range(5, 12):
        pieces.append(m(idx[:, t : t + 1], mask[:, : t + 1], cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)


def test_generate_with_and_without_cache_agree():
    m = tiny()
    idx = torch.randint(0, 96, (2, 6))
    a = m.generate(idx, 10, temperature=0, use_cache=True)
    b = m.generate(idx, 10, temperature=0, use_cache=False)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(m.generate(idx, 10, generator=g1), m.generate(idx, 10, generator=g2, use_cache=False))


def test_batched_greedy_generation_equals_one_by_one():
    m = tiny()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    T0 = max(map(len, prompts))
    idx = torch.tensor([[0] * (T0 - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T0 - len(p)) + [1] * len(p) for p in prompts])
    batched = m.generate(idx, 12, temperature=0, attention_mask=mask)
    for i, p in enumerate(prompts):
        single = m.generate(torch.tensor([p]), 12, temperature=0)
        assert batched[i, T0:].tolist() == single[0, len(p) :].tolist()


def test_generation_stops_at_eos_and_returns_logprobs():
    m = tiny()
    eos = 96
    # make EOS overwhelmingly likely after any token (a hook on the tied lm_head): every sequence ends at once
    def boost_eos(module, inputs, out):
        out[..., eos] += 50.0
        return out

    m.lm_head.register_forward_hook(boost_eos)
    idx = torch.randint(0, 90, (2, 4))
    ids, logps = m.generate(idx, 10, temperature=1.0, eos_token_id=eos, return_logprobs=True,
                            generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2, 5) and (ids[:, -1] == eos).all()  # one new token each, then stop
    assert logps.shape == (2, 1) and (logps <= 0).all() and (logps > -1e-3).all()


def test_generate_logprobs_match_a_forward_pass():
    m = tiny()
    idx = torch.randint(0, 96, (2, 5))
    ids, logps = m.generate(idx, 8, temperature=1.0, generator=torch.Generator().manual_seed(1), return_logprobs=True)
    logits = m(ids)[:, 4:-1]  # the positions that predicted each new token
    ref = F.log_softmax(logits, dim=-1).gather(-1, ids[:, 5:, None]).squeeze(-1)
    torch.testing.assert_close(logps, ref, atol=1e-5, rtol=1e-5)


def test_top_k_and_top_p_on_hand_made_logits():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False]]
    p = filter_logits(logits, top_p=0.7)  # 0.5 < 0.7, 0.5+0.3 >= 0.7: keep the first two
    assert torch.isfinite(p).tolist() == [[True, True, False, False]]
    p = filter_logits(logits, top_p=0.5)  # the first token alone has mass 0.5
    assert torch.isfinite(p).tolist() == [[True, False, False, False]]
    p = filter_logits(logits, top_p=0.81)
    assert torch.isfinite(p).tolist() == [[True, True, True, False]]
    # filtering is per row and order-independent
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.7)).tolist() == [[False, True, False, True]]


def test_sampling_invariants():
    logits = torch.randn(4, 50)
    g = lambda s: torch.Generator().manual_seed(s)
    greedy_a, _ = sample_next(logits, g(1), temperature=0)
    greedy_b, _ = sample_next(logits, g(2), temperature=0)
    assert torch.equal(greedy_a, greedy_b) and torch.equal(greedy_a, logits.argmax(-1))
    top1, lp = sample_next(logits, g(5), temperature=1.0, top_k=1)
    assert torch.equal(top1, logits.argmax(-1)) and torch.allclose(lp, torch.zeros(4))
    a, _ = sample_next(logits, g(7), temperature=0.8, top_p=0.9)
    b, _ = sample_next(logits, g(7), temperature=0.8, top_p=0.9)
    assert torch.equal(a, b)
    draws = torch.stack([sample_next(logits, g(s))[0] for s in range(20)])
    assert len(set(draws[:, 0].tolist())) > 1  # sampling actually samples
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, g(0), temperature=-1)


def test_scalar_head_reads_the_last_real_token():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    rm = GPTScalar(cfg).eval()
    seq = torch.tensor([[3, 4, 49]])  # t0, t1, EOS (pad id == EOS id == 49)
    ref = rm.score(seq, torch.ones_like(seq))
    right = torch.tensor([[3, 4, 49, 49, 49]])
    right_mask = torch.tensor([[1, 1, 1, 0, 0]])
    left = torch.tensor([[49, 49, 3, 4, 49]])
    left_mask = torch.tensor([[0, 0, 1, 1, 1]])
    torch.testing.assert_close(rm.score(right, right_mask), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm.score(left, left_mask), ref, atol=1e-5, rtol=1e-5)
    values = rm(right, right_mask)
    assert values.shape == (1, 5)
    torch.testing.assert_close(rm.score(right, right_mask), values[:, 2])
    rm.reward_shift.fill_(1.0)
    rm.reward_scale.fill_(2.0)
    torch.testing.assert_close(rm.score(seq, torch.ones_like(seq)), (ref - 1.0) / 2.0)


def test_matches_transformers_gpt2(tmp_path):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = tr.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, vocab_size=97,
                           resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    hf = tr.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
        greedy = hf.generate(idx[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(idx[:1, :5], 10, temperature=0), greedy)


def official_param_count(name: str) -> int:
    """GPT-2's parameter count from its shape: embeddings + n_layer blocks (12 C^2 + 13 C each) + ln_f."""
    c = config_from_preset(name)
    C = c.n_embd
    return c.vocab_size * C + c.block_size * C + c.n_layer * (12 * C * C + 13 * C) + 2 * C


def test_presets_match_the_published_sizes():
    """The layouts of OpenAI's four checkpoints (n_layer / n_head / n_embd) and their published parameter counts
    (the lm_head is tied to wte); counted from the shapes, without building a 1.5B model."""
    layouts = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
               "gpt2-xl": (48, 25, 1600)}
    published = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                 "gpt2-xl": 1_557_611_200}
    for name, (n_layer, n_head, n_embd) in layouts.items():
        c = config_from_preset(name)
        assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (n_layer, n_head, n_embd, 1024, 50257)
        assert official_param_count(name) == published[name]
    assert official_param_count("tiny") == GPT(config_from_preset("tiny")).num_params()  # the formula itself


@pytest.mark.parametrize("name", ["gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_larger_layouts_match_transformers(name, tmp_path):
    """The larger sizes, scaled down: their head counts (16, 20, 25 -- 25 is odd) at 2 dims per head and 3 layers,
    random weights saved by transformers, loaded by GPT.from_pretrained: the same logits."""
    tr = pytest.importorskip("transformers")
    n_head = config_from_preset(name).n_head
    torch.manual_seed(0)
    hf_cfg = tr.GPT2Config(n_positions=32, n_embd=2 * n_head, n_layer=3, n_head=n_head, vocab_size=97,
                           resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    hf = tr.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd) == (3, n_head, 2 * n_head)
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients():
    """--grad-checkpoint recomputes each block in backward: same loss and gradients, less stored activation."""
    grads = []
    for on in (False, True):
        model = tiny()
        model.grad_checkpoint = on
        idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
        loss = F.cross_entropy(model(idx)[:, :-1].reshape(-1, 97), idx[:, 1:].reshape(-1))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
