"""LoRA (minipost/lora.py): zero-initialised B is the base model, merging, save/load, and the adapters-off reference."""

import argparse
import copy

import pytest
import torch

from minipost import common, lora
from minipost.model import GPT, GPTConfig, GPTScalar, token_logprobs
from minipost.tokenizer import Tokenizer


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=512, n_layer=2, n_head=4, n_embd=32)).eval()


def lora_args(**kw):
    return argparse.Namespace(**{"lora_rank": 4, "lora_alpha": 8.0, "lora_targets": ["attn", "proj", "mlp"],
                                 "lora_save": "merged", "init": "", **kw})


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


IDX = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))


def test_fresh_adapters_are_the_base_model_and_only_they_train():
    base = tiny()
    model = lora.apply_lora(copy.deepcopy(base), rank=4, alpha=8.0, targets=["attn", "proj", "mlp"])
    with torch.no_grad():
        assert torch.equal(model(IDX), base(IDX))  # B = 0: the update adds exact zeros
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    # per block: c_attn (32 -> 96), attn.c_proj (32 -> 32), c_fc (32 -> 128), mlp.c_proj (128 -> 32); r (in + out)
    per_block = 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert lora.count_params(model) == (2 * per_block, base.num_params() + 2 * per_block)  # vocab 512 in base
    attn_only = lora.apply_lora(copy.deepcopy(base), rank=2, alpha=2.0, targets=["attn"])
    assert lora.count_params(attn_only)[0] == 2 * 2 * (32 + 96)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown LoRA targets"):
        lora.parse_targets("attn,qkv")


def test_update_is_alpha_over_r_times_BA():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    w = lora.LoRALinear(layer, rank=2, alpha=3.0)
    randomize_adapters(torch.nn.ModuleDict({"l": w}))
    x = torch.randn(4, 6)
    expected = x @ layer.weight.t() + layer.bias + 1.5 * (x @ w.lora_A.t() @ w.lora_B.t())
    torch.testing.assert_close(w(x), expected)
    torch.testing.assert_close(w.merged_weight(), layer.weight + 1.5 * w.lora_B @ w.lora_A)


def test_merged_weights_compute_what_the_adapted_model_computes():
    model = lora.apply_lora(tiny(), rank=4, alpha=8.0, targets=["attn", "proj", "mlp"])
    randomize_adapters(model)
    plain = tiny()
    plain.load_state_dict(lora.merged_state_dict(model))
    with torch.no_grad():
        adapted, merged = model(IDX), plain(IDX)
        assert (adapted - tiny()(IDX)).abs().max() > 1e-2  # the adapters do change the model
        torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("how", ["merged", "adapters"])
def test_save_and_load_round_trip(tmp_path, how):
    tok = Tokenizer(512)
    base = tiny()
    common.save_stage(tmp_path / "base", base, stage="sft", kind="lm", tokenizer=tok, args=None, metrics={})
    model = lora.apply_lora(copy.deepcopy(base), rank=4, alpha=8.0, targets=["attn", "mlp"])
    randomize_adapters(model)
    args = lora_args(lora_save=how, init=str(tmp_path / "base"), lora_targets=["attn", "mlp"])
    common.save_stage(tmp_path / "out", model, stage="sft", kind="lm", tokenizer=tok, args=args, metrics={})
    loaded, _, config = common.load_model(str(tmp_path / "out"))
    assert config["lora"]["saved"] == how
    assert lora.has_adapters(loaded) == (how == "adapters")  # merged: a plain GPT; adapters: base + LoRA again
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(IDX), model(IDX), atol=1e-5, rtol=1e-5)
    size = (tmp_path / "out" / "model.safetensors").stat().st_size
    assert (size < 0.5 * (tmp_path / "base" / "model.safetensors").stat().st_size) == (how == "adapters")


def test_scalar_model_keeps_its_head_trainable_and_merges():
    torch.manual_seed(0)
    rm = GPTScalar(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=32)).eval()
    lora.apply_lora(rm, rank=2, alpha=4.0, targets=["attn"], train_also=("head",))
    assert {n for n, p in rm.named_parameters() if p.requires_grad} == \
        {"head.weight", "head.bias"} | {f"gpt.transformer.h.{i}.attn.c_attn.lora_{m}" for i in (0, 1) for m in "AB"}


def test_adapters_off_reference_equals_a_separate_frozen_copy():
    """The reference of DPO/PPO/GRPO with LoRA: the policy with adapters off gives exactly the log-probs of a
    separate frozen copy of the starting weights -- also after the adapters have trained."""
    frozen_copy = common.frozen(tiny())
    policy = lora.apply_lora(tiny(), rank=4, alpha=8.0, targets=["attn", "proj", "mlp"])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # train the adapters a little
        loss = -token_logprobs(policy(IDX)[:, :-1], IDX[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref = common.frozen(lora.ReferenceView(policy))
    assert all(p.requires_grad for n, p in policy.named_parameters() if ".lora_" in n)  # frozen() left them alone
    with torch.no_grad():
        ref_logps = token_logprobs(ref(IDX)[:, :-1], IDX[:, 1:])
        copy_logps = token_logprobs(frozen_copy(IDX)[:, :-1], IDX[:, 1:])
        policy_logps = token_logprobs(policy(IDX)[:, :-1], IDX[:, 1:])
        assert torch.equal(ref_logps, copy_logps)
        assert (policy_logps - ref_logps).abs().max() > 1e-3  # the policy itself did move
        assert torch.equal(ref.generate(IDX[:1, :4], 6, temperature=0), frozen_copy.generate(IDX[:1, :4], 6,
                                                                                            temperature=0))
    assert lora.has_adapters(policy) and all(m.enabled for m in policy.modules() if isinstance(m, lora.LoRALinear))
