"""
Checkpoints that cannot execute code or silently lose work.

A checkpoint is a directory:

    model.safetensors   the weights (tied parameters stored once, the tie recorded in the metadata)
    train_state.pt      optional: optimizer state, step, RNG states... (for --resume)
    config.json         model config, args, metrics, plus "files": {name: sha256} of the two above

Why not just torch.save(model.state_dict())? torch.save writes a pickle, and unpickling a file can
run arbitrary code (a pickle may say "call os.system with these arguments"). Weights are the files
people download and share, so we store them as safetensors: an 8-byte length, a JSON header and raw
bytes, nothing to execute. The train state (nested dicts of tensors and numbers) still goes through
torch.save, but it is only ever read back with torch.load(weights_only=True), which refuses anything
that is not plain tensors/containers/numbers; we never fall back to the unsafe loader.

The second enemy is a half-written checkpoint: a job killed during a save must not leave a file that
loads as garbage, or a directory whose weights come from step 2000 and optimizer from step 1000.
Every file is written to a temporary name, fsync'ed, then os.replace'd into place (a rename is atomic
on POSIX: readers see the old file or the new one, never half of each). One rename per file is not
enough for a directory of three files, so a save is a transaction with a commit record (see
save_checkpoint): whenever the process dies, the directory loads as the old checkpoint or the new one.
"""

import hashlib
import json
import math
import os
import sys
import tempfile
import uuid
from pathlib import Path

import torch

# The safetensors dtype names (these exact strings are the format) and their torch dtypes.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
PENDING = ".new"  # a save's files before its commit (see save_checkpoint)
# Results computed from a checkpoint's weights: a save that changes the weights removes them.
DERIVED_FILES = ("eval.json", "samples.jsonl", "sweep.json")
MAX_HEADER_BYTES = 100_000_000  # the official library's limit; a bigger "length" is a corrupt file


class CheckpointError(ValueError):
    """A checkpoint (or a file in it) is missing, corrupt, unsafe or does not fit the model."""


# -----------------------------------------------------------------------------
# Atomic writes: temp file in the same directory -> flush -> fsync -> os.replace -> fsync the dir

def _fsync_dir(directory):
    # The rename itself lives in the directory entry; fsync the directory so it survives a power cut.
    if os.name != "posix":
        return  # Windows cannot open a directory for fsync; os.replace is still atomic there
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path, write_fn):
    """Write a file next to `path` under a unique temporary name; return that name (not yet in place).
    Same directory on purpose: os.replace is only atomic within one filesystem."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())  # bytes on disk before the rename makes them visible
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _commit(tmp, path):
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(Path(path).parent)


def atomic_write_bytes(path, data: bytes):
    _commit(_write_temp(path, lambda f: f.write(data)), path)
    _written_here.add(Path(path).resolve())


# Files this process wrote (eval.json, samples.jsonl...): results of the model it is training, which a stage
# may write just before its final save. A save keeps these and removes the older ones (see _roll_forward).
_written_here = set()


def atomic_write_json(path, obj):
    text = json.dumps(obj, indent=2) + "\n"  # serialize first: a TypeError must not leave a temp file
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path, obj):
    _commit(_write_temp(path, lambda f: torch.save(obj, f)), path)


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -----------------------------------------------------------------------------
# safetensors, by hand: [u64 little-endian N][N bytes of JSON header, space-padded][raw data]

def _check_little_endian():
    # The format is little-endian; we copy memory as-is, so a big-endian host would corrupt it.
    if sys.byteorder != "little":
        raise CheckpointError("minipost's safetensors code assumes a little-endian machine")


def _write_safetensors_to(f, tensors, metadata):
    _check_little_endian()
    header, flat, offset = {}, [], 0
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"invalid tensor name {name!r}")
        if t.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"tensor {name!r} has dtype {t.dtype}, safetensors here supports "
                                  f"{sorted(DTYPE_NAMES.values())}")
        t = t.detach().to("cpu").contiguous()
        # Reinterpret the tensor's memory as bytes: (numel * itemsize,) uint8, no copy.
        raw = t.reshape(-1).view(torch.uint8)
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + raw.numel()]}
        flat.append(raw)
        offset += raw.numel()
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError("safetensors metadata must map str to str (json.dumps other values)")
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # pad with spaces so the data starts 8-byte aligned
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for raw in flat:
        f.write(raw.numpy())  # the numpy view exposes the buffer protocol: written without a copy


def write_safetensors(path, tensors, metadata=None):
    """Atomically write {name: tensor} (moved to CPU, made contiguous) and str->str metadata."""
    _commit(_write_temp(path, lambda f: _write_safetensors_to(f, tensors, metadata)), path)


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"duplicate keys {sorted(dup)}")
    return dict(pairs)


def read_safetensors(path):
    """Read a safetensors file -> (tensors, metadata). Every field is validated; anything odd raises
    CheckpointError naming the path. Tensors are freshly allocated (they own their memory)."""
    _check_little_endian()
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    with f:
        prefix = f.read(8)
        # A pickle starts with the PROTO opcode 0x80; torch.save's zip archive starts with "PK".
        if prefix[:1] == b"\x80" or prefix[:2] == b"PK":
            raise CheckpointError(f"{path} looks like a pickle/torch.save file; minipost only loads "
                                  "safetensors weights (refusing to unpickle: it could run code)")
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is {size} bytes, too short for a safetensors file (>= 8)")
        n = int.from_bytes(prefix, "little")
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} is larger than the {size - 8} bytes "
                                  "left in the file (truncated or not a safetensors file)")
        try:
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{path}: header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: header is a JSON {type(header).__name__}, not an object")

        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError(f"{path}: __metadata__ must be an object of strings")

        # Validate every entry before reading any data.
        entries = []  # (begin, end, name, dtype, shape)
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise CheckpointError(f"{path}: tensor {name!r} needs exactly dtype/shape/data_offsets,"
                                      f" got {info!r}")
            if info["dtype"] not in DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {info['dtype']!r}")
            dtype, shape, offs = DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
                raise CheckpointError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
            if not (isinstance(offs, list) and len(offs) == 2
                    and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1]):
                raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offs!r}")
            nbytes = math.prod(shape) * dtype.itemsize
            if offs[1] - offs[0] != nbytes:
                raise CheckpointError(f"{path}: tensor {name!r} {info['dtype']}{shape} needs {nbytes} "
                                      f"bytes but data_offsets {offs} span {offs[1] - offs[0]}")
            entries.append((offs[0], offs[1], name, dtype, shape))

        # The tensors must tile the data buffer exactly: no overlap, no hole, nothing past the end.
        buffer_len = size - 8 - n
        entries.sort(key=lambda e: (e[0], e[1]))
        expected_begin = 0
        for begin, end, name, _, _ in entries:
            if begin < expected_begin:
                raise CheckpointError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) overlaps "
                                      "the previous tensor")
            if begin > expected_begin:
                raise CheckpointError(f"{path}: {begin - expected_begin} unused bytes before tensor "
                                      f"{name!r}")
            if end > buffer_len:
                raise CheckpointError(f"{path}: tensor {name!r} ends at data byte {end} but the file "
                                      f"holds only {buffer_len} data bytes (truncated file?)")
            expected_begin = end
        if expected_begin != buffer_len:
            raise CheckpointError(f"{path}: {buffer_len - expected_begin} stray bytes after the last "
                                  "tensor")

        tensors = {}
        for begin, end, name, dtype, shape in entries:
            # Read straight into a freshly allocated tensor: it owns its memory, no extra copy.
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(8 + n + begin)
            if end > begin and f.readinto(raw.numpy()) != end - begin:
                raise CheckpointError(f"{path}: file ended inside tensor {name!r} (truncated?)")
            if dtype == torch.bool and raw.numel() and raw.max() > 1:
                raise CheckpointError(f"{path}: BOOL tensor {name!r} holds bytes other than 0/1")
            tensors[name] = raw.view(dtype).reshape(shape)
    return tensors, metadata


# -----------------------------------------------------------------------------
# Checkpoint directories

def has_checkpoint(ckpt_dir) -> bool:
    """True if ckpt_dir holds a checkpoint (possibly a committed save still to roll forward)."""
    return (Path(ckpt_dir) / CONFIG_FILE).is_file() or _pending(Path(ckpt_dir) / CONFIG_FILE).is_file()


def _dedupe_ties(state_dict):
    """Keep one copy of tensors that are the same memory (GPT-2's lm_head.weight IS wte.weight).
    Returns (unique tensors, {alias: kept_key})."""
    unique, ties, seen = {}, {}, {}
    for k, t in state_dict.items():
        # Empty tensors may all report data_ptr 0: never treat those as tied.
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            ties[k] = seen[key]
        else:
            unique[k] = t
            if key is not None:
                seen[key] = k
    return unique, ties


def _check_finite(tensors, where):
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise CheckpointError(f"{where}: tensor {k!r} has {bad} non-finite (NaN/Inf) values")


def _pending(path):
    """Where a save writes the new version of `path` before the commit: `model.safetensors.new`."""
    path = Path(path)
    return path.with_name(path.name + PENDING)


def save_checkpoint(out_dir, model, config, train_state=None):
    """Save model weights, optional train state and config.json into the directory out_dir, as a whole.

    The save is a small transaction with a write-ahead record, so a checkpoint directory only ever
    changes from one complete checkpoint to the next:
      1. the new files are written completely (and fsync'ed) beside the old ones, as
         model.safetensors.new and train_state.pt.new; the old checkpoint is untouched;
      2. config.json.new appears in one atomic rename: it records the sha256 of the new files, and its
         existence is the COMMIT -- from here on the new checkpoint is the one that loads;
      3. roll forward: each .new file is renamed over its old version, config.json.new last.
    A process killed in step 1 leaves the old checkpoint, plus .new files that the next run deletes
    (recover(clean=True)). Killed in step 3, it leaves a mix of old and new files AND config.json.new,
    and every loader first finishes the renames (recover) -- so the new checkpoint loads.
    Files the previous weights produced (eval.json, samples.jsonl, ...) are removed in step 3: they
    describe weights that no longer exist. A pending log.jsonl.new (the log of an --overwrite run
    that has not saved yet, see live_log) is committed with the checkpoint.
    """
    out_dir = Path(out_dir)
    if "files" in config:
        raise CheckpointError("config key 'files' is reserved for the checkpoint's file hashes")
    try:
        json.dumps(config)  # fail before touching the disk
    except TypeError as e:
        raise CheckpointError(f"config for {out_dir} is not JSON-serializable: {e}") from e
    tensors, ties = _dedupe_ties(model.state_dict())
    _check_finite(tensors, f"refusing to save {out_dir}")
    metadata = {"format": "pt", "ties": json.dumps(ties)}
    out_dir.mkdir(parents=True, exist_ok=True)
    recover(out_dir)  # an earlier save that committed but was not rolled forward: finish it first

    files = {}  # name -> sha256 of its new content, written as name.new
    try:
        _commit(_write_temp(out_dir / MODEL_FILE, lambda f: _write_safetensors_to(f, tensors, metadata)),
                _pending(out_dir / MODEL_FILE))
        files[MODEL_FILE] = _sha256_file(_pending(out_dir / MODEL_FILE))
        if train_state is not None:
            state_new = _pending(out_dir / STATE_FILE)
            _commit(_write_temp(out_dir / STATE_FILE, lambda f: torch.save(train_state, f)), state_new)
            # Find out now, not at --resume time hours later, if the state won't load safely
            # (e.g. a numpy RNG state or a custom object that weights_only refuses).
            try:
                torch.load(state_new, weights_only=True, map_location="cpu")
            except Exception as e:
                raise CheckpointError(f"train_state for {out_dir} cannot be loaded back with "
                                      f"weights_only=True ({e}); store only tensors, numbers, "
                                      "strings and dicts/lists of them") from e
            files[STATE_FILE] = _sha256_file(state_new)
        text = json.dumps({**config, "files": files}, indent=2) + "\n"
    except BaseException:
        for name in (MODEL_FILE, STATE_FILE):  # not committed: the old checkpoint stays as it was
            _pending(out_dir / name).unlink(missing_ok=True)
        raise
    # The commit point: one rename makes config.json.new (complete, fsync'ed) appear.
    atomic_write_bytes(_pending(out_dir / CONFIG_FILE), text.encode("utf-8"))
    _roll_forward(out_dir)
    _record_save(out_dir, train_state.get("step") if isinstance(train_state, dict) else None)


def _roll_forward(out_dir):
    """Step 3 of a save: put every committed .new file in place, config.json.new last. Safe to repeat
    (a file already renamed is simply not there any more), and safe if two processes do it at once."""
    out_dir = Path(out_dir)
    config_new = _pending(out_dir / CONFIG_FILE)
    try:
        listed = json.loads(config_new.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return  # another process finished the renames
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_new}: unreadable commit record ({e})") from e
    for name in (MODEL_FILE, STATE_FILE, LOG_FILE):
        try:
            os.replace(_pending(out_dir / name), out_dir / name)
        except FileNotFoundError:
            pass  # already in place (or not part of this save)
    if STATE_FILE not in listed:
        (out_dir / STATE_FILE).unlink(missing_ok=True)  # a train state from an older save: not this one's
    try:  # config.json is still the old one here (it is renamed last)
        old_weights = json.loads((out_dir / CONFIG_FILE).read_text(encoding="utf-8"))["files"][MODEL_FILE]
    except (OSError, ValueError, KeyError, TypeError):
        old_weights = None
    if listed.get(MODEL_FILE) != old_weights:
        for name in DERIVED_FILES:
            if (out_dir / name).resolve() not in _written_here:
                (out_dir / name).unlink(missing_ok=True)  # results of weights that are gone
    try:
        os.replace(config_new, out_dir / CONFIG_FILE)
    except FileNotFoundError:
        pass
    _fsync_dir(out_dir)


def recover(ckpt_dir, clean=False):
    """Bring a checkpoint directory back to one complete checkpoint after a killed save.

    A committed save (config.json.new exists) is rolled forward. With clean=True -- only at the start
    of a training run, never while another process may be saving -- the leftovers of a save killed
    before its commit are deleted too: .new files and hidden .NAME.*.tmp files."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    if _pending(ckpt_dir / CONFIG_FILE).is_file():
        _roll_forward(ckpt_dir)
    if clean:
        for path in ckpt_dir.iterdir():
            stray_new = path.name in {n + PENDING for n in (MODEL_FILE, STATE_FILE, LOG_FILE)}
            stray_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
            if (stray_new or stray_tmp) and path.is_file():
                path.unlink(missing_ok=True)


def live_log(out_dir):
    """The file a running stage appends its log lines to: log.jsonl, or log.jsonl.new while an
    --overwrite run has not saved yet (the old checkpoint keeps its own log until then)."""
    pending = _pending(Path(out_dir) / LOG_FILE)
    return pending if pending.exists() else Path(out_dir) / LOG_FILE


def start_log(out_dir, start_step: int) -> Path:
    """Prepare log.jsonl for a run that starts at `start_step` and return the file to append to.

    Resuming: rows the killed run logged after its last checkpoint are dropped (they are logged again),
    so every step appears once. A fresh run over an existing checkpoint writes log.jsonl.new, which
    its first save commits. A fresh run in an empty directory starts log.jsonl from scratch."""
    out_dir = Path(out_dir)
    log = out_dir / LOG_FILE
    if start_step > 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
        rows = [line + "\n" for line in lines if _logged_step(line) < start_step]
        atomic_write_bytes(log, "".join(rows).encode("utf-8"))
        return log
    target = _pending(log) if has_checkpoint(out_dir) else log
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"")
    return target


def _logged_step(line: str) -> float:
    """The step of one log.jsonl row; inf for a row to drop (blank, or torn by a kill in mid-write)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return math.inf
    return step if isinstance(step, int) else math.inf


# The last checkpoint this process saved, for the one-line message after Ctrl-C.
_last_save = {}


def _record_save(out_dir, step):
    _last_save.clear()
    _last_save.update(out_dir=str(out_dir), step=step)


def last_save():
    """{'out_dir', 'step'} of the last checkpoint this process saved, or {} if it saved none."""
    return dict(_last_save)


def weights_sha256(ckpt_dir) -> str | None:
    """The sha256 that ckpt_dir/config.json records for the weights (what eval.json is checked against)."""
    try:
        return _read_config(ckpt_dir)["files"].get(MODEL_FILE)
    except CheckpointError:
        return None


def results_stamp(ckpt_dir, *names) -> dict:
    """What a results file (eval.json) stores to say which weights and files it belongs to: the sha256 of
    the weights that ckpt_dir/config.json vouches for, and of each named file beside it."""
    ckpt_dir = Path(ckpt_dir)
    return {MODEL_FILE: weights_sha256(ckpt_dir), **{n: _sha256_file(ckpt_dir / n) for n in names}}


def stamp_mismatch(ckpt_dir, stamp) -> str | None:
    """None if `stamp` (from results_stamp) matches ckpt_dir now, else why not, in words."""
    ckpt_dir = Path(ckpt_dir)
    if not isinstance(stamp, dict) or MODEL_FILE not in stamp:
        return "it records no weights hash (written by an older minipost)"
    weights = weights_sha256(ckpt_dir)
    if stamp[MODEL_FILE] != weights:
        return (f"it was written for other weights (sha256 {str(stamp[MODEL_FILE])[:12]}..., "
                f"the checkpoint holds {str(weights)[:12]}...)")
    weights_file = ckpt_dir / MODEL_FILE  # config.json vouches for it, but the file may have been swapped since
    if not weights_file.is_file() or _sha256_file(weights_file) != weights:
        return f"{weights_file} is missing or no longer the one config.json records"
    for name, sha in stamp.items():
        if name != MODEL_FILE and (not (ckpt_dir / name).is_file() or _sha256_file(ckpt_dir / name) != sha):
            return f"{name} is missing or was changed after it"
    return None


def _read_config(ckpt_dir):
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"no checkpoint at {ckpt_dir}")
    recover(ckpt_dir)  # a save killed after its commit: finish it, the new checkpoint is the one to load
    path = ckpt_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (incomplete checkpoint?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("files"), dict):
        raise CheckpointError(f"{path} has no 'files' record of hashes (not a minipost checkpoint?)")
    return config


def _verify(ckpt_dir, config, name):
    """Check that ckpt_dir/name exists and has the sha256 that config.json recorded for it."""
    path = Path(ckpt_dir) / name
    expected = config["files"].get(name)
    if expected is None:
        raise CheckpointError(f"{Path(ckpt_dir) / CONFIG_FILE} lists no {name}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    actual = _sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path} was modified or comes from another save "
                              f"(sha256 {actual[:12]}..., config.json expects {expected[:12]}...)")
    return path


def load_checkpoint(ckpt_dir, map_location="cpu"):
    """Load (state_dict, config) from a checkpoint directory.

    state_dict has tied keys restored as the *same* tensor object under both names.
    config is config.json as saved, WITHOUT the internal "files" key of hashes."""
    config = _read_config(ckpt_dir)
    path = _verify(ckpt_dir, config, MODEL_FILE)
    tensors, metadata = read_safetensors(path)
    _check_finite(tensors, str(path))
    try:
        ties = json.loads(metadata.get("ties", "{}"))
        assert isinstance(ties, dict)
    except (ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: invalid 'ties' metadata {metadata.get('ties')!r}") from e
    tensors = {k: t.to(map_location) for k, t in tensors.items()}
    for alias, target in ties.items():
        if target not in tensors or alias in tensors:
            raise CheckpointError(f"{path}: tie {alias!r} -> {target!r} does not match the tensors")
        tensors[alias] = tensors[target]
    config.pop("files")
    return tensors, config


def load_train_state(ckpt_dir):
    """Load train_state.pt (hash-checked) with torch.load(weights_only=True): tensors, numbers,
    strings and containers only. Anything else is refused; we never retry with unpickling."""
    config = _read_config(ckpt_dir)
    path = _verify(ckpt_dir, config, STATE_FILE)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        # torch's message is a page long; the line naming what was refused is the one that matters
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        why = next((line for line in lines if "Unsupported" in line), lines[0])
        raise CheckpointError(f"{path}: cannot load train state with weights_only=True "
                              f"(refusing to unpickle arbitrary objects): {why.strip()}") from e


def load_into(model, state_dict, path_for_errors):
    """model.load_state_dict(strict=True), with an error that says which keys do not fit."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in expected]
    problems += [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"{path_for_errors}: config does not match the weights "
                              f"({len(problems)} problems; first: {'; '.join(problems[:5])})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # anything our own checks missed
        raise CheckpointError(f"{path_for_errors}: config does not match the weights: {e}") from e


def prepare_output_dir(out_dir, resume: bool, overwrite: bool):
    """Decide what a training script may do with out_dir before any work starts. Returns the Path.
    --overwrite deletes nothing here: the new save replaces the files when it happens. The directory
    itself is created by the run's first log line or save."""
    if not str(out_dir).strip():  # Path("") is the current directory: a checkpoint would land among the scripts
        raise CheckpointError("--out is empty: name the checkpoint directory to write")
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise CheckpointError("pass only one of --resume and --overwrite")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir} exists and is not a directory")
    for parent in out_dir.parents:  # mkdir would say "Not a directory" with a traceback
        if parent.exists() and not parent.is_dir():
            raise CheckpointError(f"--out {out_dir}: {parent} is a file, not a directory")
    recover(out_dir, clean=True)  # finish or discard a save that a killed run left half done
    _record_save(out_dir, None)  # for the message after Ctrl-C: nothing saved by this run yet
    if resume and not has_checkpoint(out_dir):
        raise CheckpointError(f"--resume: no checkpoint at {out_dir}")
    if has_checkpoint(out_dir) and not (resume or overwrite):
        raise CheckpointError(f"{out_dir} already holds a checkpoint; pass --resume to continue it "
                              "or --overwrite to replace it")
    # Not created yet: a run that fails on its data must not leave an empty directory behind. But the
    # first save must be able to create it, so check now that the nearest existing folder is writable.
    existing = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    try:  # a real try, not os.access: root passes os.access on read-only filesystems, /proc and /sys
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
    except OSError as e:
        raise CheckpointError(f"--out {out_dir}: cannot write in {existing} ({e.strerror})") from e
    return out_dir
