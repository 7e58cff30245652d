"""What each device may and may not do, checked on the CPU: the refusals that must come before any model loads,
generators on the wrong device, train states resumed on another device type, caches keyed by device."""

import pytest
import torch

from minipost import common, distributed, evaluate, generation
from minipost.model import GPT, GPTConfig, sample_next


def test_an_empty_device_never_picks_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert common.pick_device("") == torch.device("cpu")  # MPS only when asked: no Mac runs the tests


def test_mps_refuses_old_torch_and_bf16_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(common, "torch_version", lambda: (2, 4))
    with pytest.raises(SystemExit, match=r"--device mps needs torch >= 2\.5, this is torch"):
        common.pick_device("mps")
    monkeypatch.setattr(common, "torch_version", lambda: (2, 6))
    assert common.pick_device("mps") == torch.device("mps")
    with pytest.raises(SystemExit, match="--dtype bf16 is not supported on MPS"):
        common.pick_dtype(torch.device("mps"), "bf16")
    assert common.pick_dtype(torch.device("mps"), "auto")[0] == torch.float32


def test_torch_version_reads_release_and_local_versions(monkeypatch):
    for text, want in [("2.13.0+cpu", (2, 13)), ("2.5.1", (2, 5)), ("2.6.0a0+git123", (2, 6)), ("3.0", (3, 0))]:
        monkeypatch.setattr(torch, "__version__", text)
        assert common.torch_version() == want, text


def test_torchrun_on_mps_is_refused_before_joining(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="torchrun on MPS is not supported"):
        distributed.setup(torch.device("mps"))
    assert not torch.distributed.is_initialized()


def test_fused_attention_is_the_default_on_cuda_only():
    assert common.attention_for(torch.device("cuda"), None) is True
    assert common.attention_for(torch.device("cpu"), None) is False
    assert common.attention_for(torch.device("mps"), None) is False
    assert common.attention_for(torch.device("cuda"), False) is False  # --no-fused-attn
    assert common.attention_for(torch.device("cpu"), True) is True  # --fused-attn


def test_a_generator_on_another_device_fails_before_sampling():
    logits = torch.zeros(2, 5, device="meta")  # any non-CPU device: the check runs before any kernel
    with pytest.raises(ValueError, match="a generator on cpu cannot sample logits on meta"):
        sample_next(logits, generation.make_generator("cpu", 0), temperature=1.0)
    ids, _ = sample_next(torch.zeros(2, 5), generation.make_generator("cpu", 0), temperature=1.0)  # same device: fine
    assert ids.shape == (2,)


def test_make_generator_on_cpu_is_the_old_stream():
    """The rule changed where generators are made, not the CPU numbers: same stream as torch.Generator()."""
    a = torch.rand(5, generator=generation.make_generator("cpu", 7))
    b = torch.rand(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and generation.make_generator(torch.device("cpu"), 1).device.type == "cpu"
    assert generation.index_generator(3).device.type == "cpu"


def test_a_generator_saved_on_another_device_is_reseeded_and_said(capsys):
    gen = generation.make_generator("cpu", 11)
    saved_here = {"device": "cpu", "state": gen.get_state()}
    expected = torch.rand(3, generator=gen)
    # same device type: exact continuation (also from the bare state older checkpoints hold)
    for saved in (saved_here, saved_here["state"]):
        g = generation.make_generator("cpu", 11)
        common.restore_generator(g, saved, "sample_rng", step=4)
        assert torch.equal(torch.rand(3, generator=g), expected)
    # saved on a GPU (its state is a seed and an offset, 16 bytes): re-seeded from seed and step, said in one line
    g = generation.make_generator("cpu", 11)
    common.restore_generator(g, {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}, "sample_rng", step=4)
    assert "sample_rng was saved on cuda and this run is on cpu" in capsys.readouterr().out
    again = generation.make_generator("cpu", 11)
    common.restore_generator(again, {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}, "x", step=4)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=again))  # deterministic
    assert g.initial_seed() != 11


def test_stored_evaluations_are_reused_only_for_the_same_device_and_dtype(tmp_path):
    from minipost.tokenizer import Tokenizer
    from minipost.world import build_world

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=4096, n_layer=1, n_head=2, n_embd=32)).eval()
    tok, world = Tokenizer(4096), build_world(seed=0, n_docs=1)
    result = evaluate.evaluate_model(model, tok, world, device="cpu", seed=1, n_samples=1, limit=3)
    evaluate.write_eval(tmp_path, result)
    assert result["settings"]["device"] == "cpu" and result["settings"]["dtype"] == "float32"
    assert evaluate.load_eval(tmp_path, model, seed=1, n_samples=1, limit=3) is not None
    assert evaluate.load_eval(tmp_path, model, seed=1, n_samples=1, limit=3, device="cuda") is None
    assert evaluate.load_eval(tmp_path, model, seed=1, n_samples=1, limit=3, dtype=torch.bfloat16) is None
