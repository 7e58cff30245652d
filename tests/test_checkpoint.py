"""Tests for minipost/checkpoint.py: hand-written safetensors, safe loading, atomic saves."""

import json
import os
import pickle

import pytest
import torch
import torch.nn as nn

from minipost import checkpoint as ck
from minipost.checkpoint import CheckpointError


class Evil:
    """Unpickling this calls open(marker, "w"), i.e. creates a file: our stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Tiny(nn.Module):
    """Embedding + LM head sharing one weight, like GPT-2's wte / lm_head."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tie

    def forward(self, idx):
        return self.lm_head(self.ln(self.wte(idx)))


def bits(t):
    """A view that compares bitwise (NaN == NaN, -0.0 != +0.0)."""
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.itemsize])


def all_dtypes_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "f64": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "f32": torch.tensor([1.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45]),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.tensor([1.0, -2.5, 3.1415926, 1e30, -1e-30]).bfloat16(),
        "i64": torch.tensor([-(2**63), 2**63 - 1, 0, 7]),
        "i32": torch.tensor([[-(2**31), 2**31 - 1]], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, 1], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),  # 0-d
        "empty": torch.zeros(0, 4),  # no bytes at all
        "noncontig": torch.arange(12.0).reshape(3, 4).t(),  # written contiguous
    }


def test_round_trip_all_dtypes_bitwise(tmp_path):
    tensors = all_dtypes_tensors()
    path = tmp_path / "w.safetensors"
    ck.write_safetensors(path, tensors, {"step": "42", "note": "héllo"})
    loaded, meta = ck.read_safetensors(path)
    assert meta == {"step": "42", "note": "héllo"}
    assert list(loaded) == list(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape, k
        assert torch.equal(bits(loaded[k].contiguous()), bits(t.contiguous())), k
    assert loaded["scalar"].dim() == 0 and loaded["scalar"].item() == 3.25
    # Tensors own their memory: writable and independent of the file.
    loaded["f32"][0] = 99.0
    again, _ = ck.read_safetensors(path)
    assert again["f32"][0].item() == 1.5


def test_no_metadata_round_trip(tmp_path):
    ck.write_safetensors(tmp_path / "a.safetensors", {"x": torch.ones(2)})
    tensors, meta = ck.read_safetensors(tmp_path / "a.safetensors")
    assert meta == {} and torch.equal(tensors["x"], torch.ones(2))


def test_file_follows_the_spec(tmp_path):
    tensors = {"a": torch.arange(3, dtype=torch.int16), "b": torch.ones(2, 2), "c": torch.zeros(0)}
    path = tmp_path / "w.safetensors"
    ck.write_safetensors(path, tensors, {"k": "v"})
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert (8 + n) % 8 == 0  # data starts 8-byte aligned
    header_bytes = data[8:8 + n]
    assert header_bytes.startswith(b"{") and header_bytes.rstrip(b" ").endswith(b"}")
    header = json.loads(header_bytes)
    assert header["__metadata__"] == {"k": "v"}
    assert header["a"] == {"dtype": "I16", "shape": [3], "data_offsets": [0, 6]}
    assert header["b"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [6, 22]}
    assert header["c"] == {"dtype": "F32", "shape": [0], "data_offsets": [22, 22]}
    buf = data[8 + n:]
    assert len(buf) == 22
    assert buf[:6] == b"\x00\x00\x01\x00\x02\x00"  # little-endian int16 0, 1, 2
    assert buf[6:10] == b"\x00\x00\x80\x3f"  # little-endian float32 1.0

    try:
        from safetensors.torch import load_file
    except ImportError:
        return  # the official library is optional; our own parse above is the spec check
    official = load_file(str(path))
    for k, t in tensors.items():
        assert torch.equal(official[k], t)


def test_tied_module_save_load(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    ck.save_checkpoint(tmp_path / "ckpt", model, {"vocab": 11, "d": 6})
    # The tied weight is stored once, the tie recorded in the metadata.
    tensors, meta = ck.read_safetensors(tmp_path / "ckpt" / "model.safetensors")
    assert sorted(tensors) == ["ln.bias", "ln.weight", "wte.weight"]
    assert json.loads(meta["ties"]) == {"lm_head.weight": "wte.weight"}

    state_dict, config = ck.load_checkpoint(tmp_path / "ckpt")
    assert config == {"vocab": 11, "d": 6}  # "files" is removed
    assert state_dict["lm_head.weight"] is state_dict["wte.weight"]

    torch.manual_seed(1)
    fresh = Tiny()
    ck.load_into(fresh, state_dict, tmp_path / "ckpt")
    assert fresh.lm_head.weight is fresh.wte.weight  # still one Parameter
    assert fresh.lm_head.weight.data_ptr() == fresh.wte.weight.data_ptr()
    idx = torch.tensor([[1, 2, 3, 10]])
    assert torch.equal(fresh(idx), model(idx))
    # Training the loaded model moves both "copies" together.
    with torch.no_grad():
        fresh.wte.weight[0, 0] += 1.0
    assert fresh.lm_head.weight[0, 0] == fresh.wte.weight[0, 0]


def test_load_into_mismatch_names_keys(tmp_path):
    state_dict = Tiny(vocab=11, d=6).state_dict()
    with pytest.raises(CheckpointError, match=r"ckpt-x: config does not match the weights.*wte"):
        ck.load_into(Tiny(vocab=11, d=8), state_dict, "ckpt-x")
    del state_dict["ln.bias"]
    with pytest.raises(CheckpointError, match="missing ln.bias"):
        ck.load_into(Tiny(), state_dict, "ckpt-x")


# ---------------------------------------------------------------- corrupt safetensors files

def write_raw(path, header, buffer=b""):
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + buffer)
    return path


def test_truncated_file_at_many_points(tmp_path):
    good = tmp_path / "good.safetensors"
    ck.write_safetensors(good, {"a": torch.arange(10.0), "b": torch.ones(3, dtype=torch.int64)})
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    for cut in [0, 3, 7, 8, 9, 8 + n // 2, 8 + n, 8 + n + 5, len(data) - 1]:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(bad)):
            ck.read_safetensors(bad)


@pytest.mark.parametrize("header, buffer, message", [
    (b"{not json", b"", "not valid JSON"),
    (b"\xff\xfe", b"", "not valid JSON"),
    (b"[1, 2]", b"", "not an object"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, "duplicate"),
    ({"a": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unknown dtype 'F8'"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "ends at data byte 8"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "invalid data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "unused bytes"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 6, "stray bytes"),
    ({"a": {"dtype": "BOOL", "shape": [1], "data_offsets": [0, 1]}}, b"\x07", "other than 0/1"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"", "dtype/shape/data_offsets"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
])
def test_bad_headers(tmp_path, header, buffer, message):
    path = write_raw(tmp_path / "bad.safetensors", header, buffer)
    with pytest.raises(CheckpointError, match=message) as e:
        ck.read_safetensors(path)
    assert str(path) in str(e.value)


def test_header_length_beyond_file(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=r"header length 1000000 is larger than the 2 bytes"):
        ck.read_safetensors(path)


def test_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    # First prove the payload is live: unpickling it really runs code.
    pickle.loads(pickle.dumps(Evil(tmp_path / "control")))
    assert (tmp_path / "control").exists()

    for name, save in [("plain", lambda p: p.write_bytes(pickle.dumps(Evil(marker)))),
                       ("torch", lambda p: torch.save({"w": Evil(marker)}, p))]:
        ckpt = tmp_path / name
        ck.save_checkpoint(ckpt, Tiny(), {})
        save(ckpt / "model.safetensors")
        with pytest.raises(CheckpointError, match="looks like a pickle/torch.save file"):
            ck.read_safetensors(ckpt / "model.safetensors")
        with pytest.raises(CheckpointError, match=str(ckpt)):
            ck.load_checkpoint(ckpt)  # the hash check already catches the swap
        assert not marker.exists()


# ---------------------------------------------------------------- checkpoint directories

def test_nonfinite_refused_on_save_and_load(tmp_path):
    model = Tiny()
    with torch.no_grad():
        model.ln.weight[2] = float("nan")
    with pytest.raises(CheckpointError, match="'ln.weight' has 1 non-finite"):
        ck.save_checkpoint(tmp_path / "ckpt", model, {})
    assert not (tmp_path / "ckpt" / "config.json").exists()

    # A NaN file written by hand, with a config whose hashes are consistent: still refused on load.
    ck.save_checkpoint(tmp_path / "ok", Tiny(), {})
    weights = tmp_path / "ok" / "model.safetensors"
    tensors, meta = ck.read_safetensors(weights)
    tensors["ln.bias"][0] = float("inf")
    ck.write_safetensors(weights, tensors, meta)
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    cfg["files"]["model.safetensors"] = ck._sha256_file(weights)
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'ln.bias' has 1 non-finite"):
        ck.load_checkpoint(tmp_path / "ok")


def test_missing_and_corrupt_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match=f"no checkpoint at {tmp_path / 'nope'}"):
        ck.load_checkpoint(tmp_path / "nope")
    ckpt = tmp_path / "ckpt"
    ck.save_checkpoint(ckpt, Tiny(), {"a": 1})
    config_text = (ckpt / "config.json").read_text()

    (ckpt / "config.json").write_text(config_text[:-10])  # truncated JSON
    with pytest.raises(CheckpointError, match=r"config.json: invalid JSON"):
        ck.load_checkpoint(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        ck.load_checkpoint(ckpt)
    (ckpt / "config.json").write_text(config_text)
    ck.load_checkpoint(ckpt)  # restored: loads again
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing"):
        ck.load_checkpoint(ckpt)


def test_tampered_weights_detected(tmp_path):
    ckpt = tmp_path / "ckpt"
    ck.save_checkpoint(ckpt, Tiny(), {})
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last weight: still a perfectly valid safetensors file
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    ck.read_safetensors(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors was modified or comes from another"):
        ck.load_checkpoint(ckpt)


def test_train_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    expected = torch.rand(3)  # the draws that follow this RNG state
    state = {"step": 1, "optimizer": opt.state_dict(), "rng": rng, "best": 0.5, "name": "sft",
             "history": [1.0, 2.0]}
    ck.save_checkpoint(tmp_path / "ckpt", model, {}, train_state=state)
    loaded = ck.load_train_state(tmp_path / "ckpt")
    assert loaded["step"] == 1 and loaded["best"] == 0.5 and loaded["name"] == "sft"
    assert loaded["history"] == [1.0, 2.0]
    assert torch.equal(loaded["rng"], rng) and loaded["rng"].dtype == torch.uint8
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], exp_avg)
    assert exp_avg.abs().sum() > 0  # the step really happened
    # The optimizer state loads into a fresh optimizer and the RNG state reproduces draws.
    opt2 = torch.optim.AdamW(Tiny().parameters(), lr=1e-2)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-2
    torch.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)

    # A later save without a train state removes the stale one.
    ck.save_checkpoint(tmp_path / "ckpt", model, {})
    assert not (tmp_path / "ckpt" / "train_state.pt").exists()
    with pytest.raises(CheckpointError, match="lists no train_state.pt"):
        ck.load_train_state(tmp_path / "ckpt")


def test_train_state_with_arbitrary_object_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    # Refused at save time already, since it could not be loaded back safely.
    with pytest.raises(CheckpointError, match="weights_only=True"):
        ck.save_checkpoint(ckpt, Tiny(), {}, train_state={"step": 1, "x": Evil(marker)})
    assert not (ckpt / "config.json").exists() and not marker.exists()
    assert [p.name for p in ckpt.iterdir()] == []  # no temp files left behind

    # A malicious but hash-consistent checkpoint: load refuses, the payload never runs.
    ck.save_checkpoint(ckpt, Tiny(), {}, train_state={"step": 1})
    torch.save({"step": 1, "x": Evil(marker)}, ckpt / "train_state.pt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["files"]["train_state.pt"] = ck._sha256_file(ckpt / "train_state.pt")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"train_state.pt: cannot load train state"):
        ck.load_train_state(ckpt)
    assert not marker.exists()


def test_prepare_output_dir(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=f"--resume: no checkpoint at {out}"):
        ck.prepare_output_dir(out, resume=True, overwrite=False)
    assert ck.prepare_output_dir(out, resume=False, overwrite=False) == out
    assert not out.exists()  # created by the first save: a run that fails on its data leaves nothing
    assert not ck.has_checkpoint(out)
    ck.save_checkpoint(out, Tiny(), {})
    assert ck.has_checkpoint(out)
    with pytest.raises(CheckpointError, match="already holds a checkpoint; pass --resume"):
        ck.prepare_output_dir(out, resume=False, overwrite=False)
    ck.prepare_output_dir(out, resume=True, overwrite=False)
    ck.prepare_output_dir(out, resume=False, overwrite=True)
    assert ck.has_checkpoint(out)  # --overwrite deletes nothing by itself


def test_atomic_helpers(tmp_path):
    ck.atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    with pytest.raises(TypeError):
        ck.atomic_write_json(tmp_path / "a.json", {"x": object()})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}  # old content kept
    ck.atomic_torch_save(tmp_path / "s.pt", {"t": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["t"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "s.pt"]  # no temp files


def fail_on_replace_call(monkeypatch, n):
    """Make the n-th os.replace call (1-based) raise, as if the process died there."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == n:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_interrupted_save_before_any_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    old = Tiny()
    ck.save_checkpoint(ckpt, old, {"step": 1}, train_state={"step": 1})
    new = Tiny()
    fail_on_replace_call(monkeypatch, 1)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save_checkpoint(ckpt, new, {"step": 2}, train_state={"step": 2})
    monkeypatch.undo()
    state_dict, config = ck.load_checkpoint(ckpt)
    assert config == {"step": 1} and ck.load_train_state(ckpt) == {"step": 1}
    assert torch.equal(state_dict["wte.weight"], old.wte.weight)
    assert not torch.equal(state_dict["wte.weight"], new.wte.weight)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors",
                                                      "train_state.pt"]  # temps cleaned up


@pytest.mark.parametrize("crash_at", [4, 5, 6])  # after the commit: during the renames into place
def test_interrupted_save_after_its_commit_loads_the_new_checkpoint(tmp_path, monkeypatch, crash_at):
    ckpt = tmp_path / "ckpt"
    ck.save_checkpoint(ckpt, Tiny(), {"step": 1}, train_state={"step": 1})
    new = Tiny()
    calls = fail_on_replace_call(monkeypatch, crash_at)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save_checkpoint(ckpt, new, {"step": 2}, train_state={"step": 2})
    monkeypatch.undo()
    assert [p.name for p in calls][3:] == ["model.safetensors", "train_state.pt", "log.jsonl"][:crash_at - 3]
    state_dict, config = ck.load_checkpoint(ckpt)  # finishes the committed save first
    assert config == {"step": 2} and ck.load_train_state(ckpt) == {"step": 2}
    assert torch.equal(state_dict["wte.weight"], new.wte.weight)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "train_state.pt"]


def kill_save_at(ckpt, model, config, train_state, n):
    """Run save_checkpoint in a forked child that dies (os._exit: no cleanup runs) at its n-th rename."""
    pid = os.fork()
    if pid == 0:  # the child
        real, count = os.replace, [0]

        def replace(src, dst):
            count[0] += 1
            if count[0] == n:
                os._exit(7)
            return real(src, dst)

        os.replace = replace
        try:
            ck.save_checkpoint(ckpt, model, config, train_state)
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_save_killed_between_any_two_files_leaves_old_or_new_checkpoint(tmp_path):
    torch.manual_seed(0)
    old, new = Tiny(), Tiny()
    outcomes = []
    for n in range(1, 9):
        ckpt = tmp_path / f"kill{n}"
        ck.save_checkpoint(ckpt, old, {"step": 1}, train_state={"step": 1})
        (ckpt / "log.jsonl").write_text('{"step": 0}\n')
        (ckpt / "eval.json").write_text("{}")  # the old weights' evaluation
        code = kill_save_at(ckpt, new, {"step": 2}, {"step": 2}, n)
        # Whatever was killed: one whole checkpoint loads, weights, state and config from the same save.
        state_dict, config = ck.load_checkpoint(ckpt)
        model = old if config["step"] == 1 else new
        assert torch.equal(state_dict["wte.weight"], model.wte.weight), n
        assert ck.load_train_state(ckpt) == {"step": config["step"]}, n
        assert (ckpt / "eval.json").exists() == (config["step"] == 1), n  # stale results go with the weights
        ck.prepare_output_dir(ckpt, resume=True, overwrite=False)  # the next run cleans the leftovers
        names = sorted(p.name for p in ckpt.iterdir())
        assert names == sorted(["config.json", "model.safetensors", "train_state.pt", "log.jsonl"]
                               + (["eval.json"] if config["step"] == 1 else [])), (n, names)
        outcomes.append((code, config["step"]))
    # killed before the commit (3 renames: weights, state, config.json.new) -> old; after it (the renames
    # of weights, state, log -- absent here, still tried -- and config) -> new; n = 8 is a whole save.
    assert outcomes == [(7, 1)] * 3 + [(7, 2)] * 4 + [(0, 2)]


def append_rows(out, steps):
    with open(ck.live_log(out), "a") as f:
        f.writelines(json.dumps({"step": s}) + "\n" for s in steps)


def logged_steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_killed_overwrite_run_keeps_the_old_log_until_its_first_save(tmp_path):
    out = tmp_path / "run"
    ck.save_checkpoint(out, Tiny(), {"step": 3})
    (out / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(3)))
    # an --overwrite run logs two steps, then is killed before it saves
    ck.prepare_output_dir(out, resume=False, overwrite=True)
    assert ck.start_log(out, 0).name == "log.jsonl.new"
    append_rows(out, [0, 1])
    assert logged_steps(out) == [0, 1, 2]  # the old checkpoint's log, untouched
    ck.prepare_output_dir(out, resume=False, overwrite=True)  # the next run: the dead run's log is gone
    assert not (out / "log.jsonl.new").exists() and logged_steps(out) == [0, 1, 2]
    # this one saves: its log is committed with its checkpoint, later rows go to log.jsonl
    ck.start_log(out, 0)
    append_rows(out, [0])
    ck.save_checkpoint(out, Tiny(), {"step": 1})
    assert ck.live_log(out).name == "log.jsonl"
    append_rows(out, [1])
    assert logged_steps(out) == [0, 1] and not (out / "log.jsonl.new").exists()


def test_resumed_log_has_every_step_once(tmp_path):
    out = tmp_path / "run"
    ck.start_log(out, 0)
    append_rows(out, range(4))
    ck.save_checkpoint(out, Tiny(), {"step": 4})
    append_rows(out, range(4, 7))  # saved after 4 steps, killed while logging step 7: a torn last line
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    assert ck.start_log(out, 4) == out / "log.jsonl"
    append_rows(out, range(4, 9))
    assert logged_steps(out) == list(range(9))
