"""
All of GPT-2 in one file: config, hand-written attention, MLP, Block, GPT, KV cache, sampling, a scalar
head for reward and value models, and the import of the official weights.

Read top to bottom. The names inside (`wte`, `wpe`, `h`, `ln_f`, `c_attn`, `c_proj`, `c_fc`) are GPT-2's
own, so the official weights copy key by key (see `GPT.from_pretrained`).

Two things post-training needs that pre-training code often skips:
  * padding. Batches of prompts of different lengths are LEFT-padded for generation; GPT-2 has no pad
    token, so every mask comes from `attention_mask` (1 = real token), never from token ids, and the
    position ids come from the mask too, so a padded prompt sees the same positions as an unpadded one.
  * logits at every position: `forward` returns (B, T, V), and `token_logprobs` turns them into log pi(token)
    -- the quantity every loss starts from; the losses themselves (SFT, DPO, PPO, GRPO) live in the
    training scripts.

References: Radford et al. 2019 (GPT-2); nanoGPT and minGPT for the layout of the code.
"""

import json
import math
from dataclasses import dataclass, asdict, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.utils.checkpoint
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Configuration


@dataclass
class GPTConfig:
    block_size: int = 1024  # the longest sequence the model reads (learned position embeddings)
    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block; n_embd must divide by it
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout on attention weights and residual branches (0 for post-training)
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    fused_attn: bool = False  # True: torch's scaled_dot_product_attention; False: the hand-written path

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}")
        for f in fields(cls):  # a hand-edited config.json: "n_head": true would build a 1-head model silently
            v, want = d.get(f.name, f.default), type(f.default)
            if not (type(v) is want or (want is float and type(v) is int)):
                raise ValueError(f"model.{f.name} must be {'an' if want is int else 'a'} {want.__name__}, got {v!r}")
            if want is int and v < 1:
                raise ValueError(f"model.{f.name} must be positive, got {v}")
        return cls(**d)


# The official shapes, and `tiny`: the CPU default (4.2M parameters, of which 1.05M embedding) that trains
# on the toy world in minutes on 2 cores. Its vocabulary is GPT-2's first 4,095 ranks + EOS (tokenizer.py).
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096),
    # ~4x the tiny model's transformer parameters: the "larger base model" of the InstructGPT comparison.
    "tiny-4x": dict(n_layer=8, n_head=6, n_embd=384, block_size=128, vocab_size=4096),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
OFFICIAL = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def config_from_preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


# -----------------------------------------------------------------------------
# The transformer


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for `max_len` positions.

    Decoding one token then costs one row of attention instead of a forward over the whole sequence.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled (the same for every sequence in the batch)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's k, v (B, nh, T, hs) for `layer`; return all keys/values so far (B, nh, pos+T, hs)."""
        # EXERCISE kv_cache: store this step's k, v after the filled positions; return all keys and values so far
        T = k.size(2)
        self.k[layer, :, :, self.pos : self.pos + T] = k
        self.v[layer, :, :, self.pos : self.pos + T] = v
        return self.k[layer, :, :, : self.pos + T], self.v[layer, :, :, : self.pos + T]
        # END EXERCISE kv_cache


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        assert config.n_embd % config.n_head == 0, f"n_embd {config.n_embd} must divide by n_head {config.n_head}"
        self.layer = layer  # index into the KV cache
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.fused = config.fused_attn

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        # x (B, T, C); mask (B, 1, T, S) bool, True where query t may attend to key s (S = keys incl. cache),
        # or None for plain causal attention without padding
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, S, hs)

        # mask None = no padding (see GPT.hidden_states): plain causal attention over T == S tokens, or a
        # single new token (T == 1) after the cache, which may see every key: then no mask at all
        causal = mask is None and T > 1
        if self.fused:
            p = self.dropout if self.training else 0.0
            # is_causal instead of a mask lets torch pick its flash kernel
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        else:
            # EXERCISE causal_attention: masked softmax attention y (B, nh, T, hs) from q, k, v, the mask, or the causal rule
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, S)
            if causal:  # key s is visible to query t when s <= t (13-40 us to build at T = 128-256 on CPU: not cached)
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))  # every row keeps >= 1 key (see attention_mask_4d)
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
            # END EXERCISE causal_attention
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU; the exact erf form differs by ~1e-3 and breaks parity.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask, cache=None):
        x = x + self.attn(self.ln_1(x), mask, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


def attention_mask_4d(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """(B, S) padding mask of all keys (1 = real) -> (B, 1, T, S) bool mask for the last T queries.

    Query t (absolute position S-T+t) may attend to key s when s <= its position (causal) and key s is a
    real token. A padding query would then see no key at all, and softmax over all -inf is NaN; so every
    query may always attend to itself. Real queries are unaffected (they attend to themselves anyway);
    padding queries produce finite garbage that no loss or metric reads.
    """
    # EXERCISE attention_mask: the (B, 1, T, S) mask: causal, real keys only, every query sees itself
    B, S = attention_mask.shape
    q_pos = torch.arange(S - T, S, device=attention_mask.device).view(T, 1)  # (T, 1)
    k_pos = torch.arange(S, device=attention_mask.device).view(1, S)  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    real_key = attention_mask.bool().view(B, 1, 1, S)  # (B, 1, 1, S)
    itself = (k_pos == q_pos).view(1, 1, T, S)
    return (causal.view(1, 1, T, S) & real_key) | itself  # (B, 1, T, S)
    # END EXERCISE attention_mask


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings, as in GPT-2
        # activation checkpointing (--grad-checkpoint): under autograd, each block keeps only its input and
        # recomputes its activations during backward -- memory of one block instead of n_layer, for ~1/3 more compute
        self.grad_checkpoint = False
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # the tied lm_head is counted once
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def hidden_states(self, idx, attention_mask=None, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) after ln_f. idx (B, T); attention_mask (B, S), S = cache.pos + T."""
        B, T = idx.size()
        past = cache.pos if cache is not None else 0
        assert past + T <= self.config.block_size, \
            f"sequence of {past + T} tokens, the context holds {self.config.block_size}"
        if attention_mask is None and (past == 0 or T == 1):
            # No padding: plain causal attention (training, a first forward), or one new token after the
            # cache, which sees every key. No mask to build: the fast path of every decoding step.
            pos = torch.arange(past, past + T, device=idx.device).expand(B, T)
            mask = None
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.long, device=idx.device)
            S = attention_mask.size(1)
            assert S == past + T, f"attention_mask covers {S} positions, expected cache {past} + new {T}"
            # Position ids count real tokens only: a left-padded prompt starts at position 0 like an unpadded one.
            pos = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]  # (B, T)
            mask = attention_mask_4d(attention_mask, T)  # (B, 1, T, S)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            if self.grad_checkpoint and cache is None and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask, cache)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, V) at every position: post-training needs all of them."""
        return self.lm_head(self.hidden_states(idx, attention_mask, cache))

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        return_logprobs: bool = False,
        use_cache: bool = True,
        on_token=None,
    ):
        """Sample up to `max_new_tokens` after each (left-padded) prompt in idx (B, T0).

        Returns ids (B, T0 + n), n <= max_new_tokens: the prompts followed by the new tokens. A sequence
        that emitted `eos_token_id` is finished: it is padded with EOS from then on, and generation stops
        when every sequence is finished. With `return_logprobs`, also returns (B, n) log-probabilities of
        each sampled token under the distribution it was sampled from (0 after a sequence finished).
        `use_cache=False` recomputes the whole sequence every step (slow; kept for tests and benchmarks).
        `on_token(next_ids)` is called with each step's (B,) new tokens (streaming output in chat.py).
        """
        B, T0 = idx.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        total = T0 + max_new_tokens
        assert total <= self.config.block_size, (
            f"prompt of {T0} + {max_new_tokens} new tokens exceeds the context of {self.config.block_size}"
        )
        was_training = self.training
        self.eval()
        cache = None
        if use_cache:
            dtype = self.transformer.wte.weight.dtype
            # the cache holds what autocast computes; minipost autocasts only on CPU and CUDA (asking torch 2.4
            # about autocast on "mps" raises, even when it is off)
            if idx.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(idx.device.type):
                dtype = torch.get_autocast_dtype(idx.device.type)
            cache = KVCache(self.config, B, total, idx.device, dtype)
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        ids, mask, logps = idx, attention_mask.long(), []
        # Prompts without padding need no mask at all (hidden_states' fast path): a finished row would
        # then attend to its EOS padding too, but its later tokens are replaced by EOS and never read.
        padded = not bool(mask.all())
        step_ids = idx  # what to feed this step: the whole prompt first, then one token at a time
        for _ in range(max_new_tokens):
            # Only the last position's logits are needed: lm_head on (B, C), not (B, T, C) -- a (B, T0, V)
            # matmul in the first step that would cost as much as ~T0 decoding steps of lm_head.
            if cache is not None:
                h = self.hidden_states(step_ids, mask if padded else None, cache)  # (B, T, C)
            else:
                h = self.hidden_states(ids, mask if padded else None)
            logits = self.lm_head(h[:, -1, :])  # (B, V)
            next_ids, next_logps = sample_next(logits.float(), generator, temperature, top_k, top_p)  # (B,), (B,)
            if eos_token_id is not None:
                next_ids = torch.where(finished, torch.full_like(next_ids, eos_token_id), next_ids)
            next_logps = torch.where(finished, torch.zeros_like(next_logps), next_logps)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)  # finished rows: padding
            logps.append(next_logps)
            step_ids = next_ids[:, None]
            if on_token is not None:
                on_token(next_ids)
            if eos_token_id is not None:
                finished = finished | (next_ids == eos_token_id)
                if bool(finished.all()):
                    break
        self.train(was_training)
        if return_logprobs:
            return ids, torch.stack(logps, dim=1) if logps else idx.new_zeros(B, 0, dtype=torch.float)
        return ids

    # -------------------------------------------------------------------------
    # The official weights

    @classmethod
    def from_pretrained(cls, name_or_path: str, cache_dir: str = "checkpoints/pretrained") -> "GPT":
        """Load GPT-2 weights in Hugging Face's layout.

        `name_or_path`: one of gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded once into cache_dir, at the
        revision in PRETRAINED_PINS), a directory with `model.safetensors` (+ `config.json` as `save_pretrained`
        writes it), or a bare `.safetensors` file (the shape is then inferred, with 64-wide heads as in every
        GPT-2). Raises FileNotFoundError / ValueError with a one-line message for anything else, and
        download.DownloadError (saying where to put the file) when a name cannot be downloaded.
        """
        from minipost.checkpoint import read_safetensors  # the hand-written safetensors reader

        path = Path(name_or_path)
        hf_config = None
        if name_or_path in OFFICIAL and not path.exists():
            from minipost.download import download_file

            revision, sha256 = PRETRAINED_PINS.get(name_or_path, ("main", None))
            url = f"https://huggingface.co/openai-community/{name_or_path}/resolve/{revision}/model.safetensors"
            path = download_file(url, Path(cache_dir) / name_or_path / "model.safetensors", sha256=sha256,
                                 desc=name_or_path)
            config = config_from_preset(name_or_path)
        elif path.is_dir():
            if (path / "config.json").is_file():
                hf_config = _read_hf_config(path / "config.json")
            if not (path / "model.safetensors").is_file():
                found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".safetensors", ".json"))
                raise FileNotFoundError(f"{path}: no model.safetensors (found: {', '.join(found) or 'nothing'}); "
                                        f"minipost reads safetensors only (a pickled .bin can run code when loaded; "
                                        f"convert it with save_pretrained(..., safe_serialization=True))")
            path = path / "model.safetensors"
            config = None
        elif path.is_file():
            if path.suffix != ".safetensors":
                raise ValueError(f"{path}: not a .safetensors file; minipost reads safetensors weights only")
            config = None
        else:
            raise FileNotFoundError(f"{name_or_path}: not a GPT-2 name ({', '.join(OFFICIAL)}), directory or file")

        tensors, _ = read_safetensors(path)
        # Hugging Face's GPT2LMHeadModel prefixes keys with "transformer."; the original upload does not.
        sd = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # mask buffers
        sd.pop("lm_head.weight", None)  # tied to wte
        if config is None:
            config = _config_from_hf(hf_config, sd, path)
        model = cls(config)
        ours = model.state_dict()
        # GPT-2 stores these as Conv1D weights of shape (in, out); nn.Linear wants (out, in). attn.c_proj is
        # square, so forgetting this transpose raises no shape error -- it silently breaks the model.
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        missing = [k for k in ours if k != "lm_head.weight" and k.removeprefix("transformer.") not in sd]
        if missing:
            raise ValueError(f"{path}: missing GPT-2 weights {missing[:5]}")
        with torch.no_grad():
            for key, param in ours.items():
                if key == "lm_head.weight":
                    continue
                w = sd[key.removeprefix("transformer.")]
                if key.endswith(transposed):
                    w = w.t()
                if w.shape != param.shape:
                    raise ValueError(f"{path}: {key} has shape {tuple(w.shape)}, the config needs {tuple(param.shape)}")
                param.copy_(w)
        return model


# The official weights at a fixed revision of the Hugging Face repository (a branch like `main` can change),
# with the sha256 of model.safetensors, checked on download. Only gpt2's revision and hash could be
# established offline (from several independent published records); the larger models follow `main` and are
# checked by trust on first use (download.py records the first download's sha256 beside the file).
PRETRAINED_PINS = {
    "gpt2": ("607a30d783dfa663caf39e06633721c8d4cfcd7e",
             "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"),  # 548,105,171 bytes
}


def is_pretrained_source(source: str) -> bool:
    """True when `source` is something GPT.from_pretrained reads rather than a minipost checkpoint: an official
    name (with no directory of that name), a .safetensors file, or a directory with model.safetensors and no
    config.json or Hugging Face's (which names a "model_type"; a minipost checkpoint's config.json does not)."""
    path = Path(source)
    if source in OFFICIAL and not path.exists():
        return True
    if path.is_file():
        return path.suffix == ".safetensors"
    if not path.is_dir():
        return False
    if not (path / "config.json").is_file():
        return (path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False  # not JSON (or nested too deeply): the checkpoint loader says what is wrong with it


def _read_hf_config(path: Path) -> dict:
    try:
        hf = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return hf


def _config_from_hf(hf: dict | None, sd: dict, path: Path) -> GPTConfig:
    """A GPTConfig from Hugging Face's config.json, or from the weights' shapes when there is none."""
    if hf is not None:
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{path}: activation {act!r}; minipost's GPT-2 uses tanh GELU (gelu_new)")
        if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
            raise ValueError(f"{path}: layer_norm_epsilon {hf['layer_norm_epsilon']}, minipost uses 1e-5")
        missing = [k for k in ("vocab_size", "n_layer", "n_head", "n_embd") if k not in hf]
        if missing:
            raise ValueError(f"{path}: config.json lacks {', '.join(missing)} (is it a GPT-2 config?)")
        return GPTConfig(
            block_size=hf.get("n_positions", 1024),
            vocab_size=hf["vocab_size"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
        )
    if "wte.weight" not in sd or "wpe.weight" not in sd:
        raise ValueError(f"{path}: no wte.weight / wpe.weight: not GPT-2 weights")
    vocab_size, n_embd = sd["wte.weight"].shape
    if n_embd % 64:
        raise ValueError(f"{path}: width {n_embd} is not a multiple of GPT-2's 64-wide heads, so the number of "
                         f"heads cannot be inferred; put a config.json (with n_head) beside model.safetensors")
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("h.")})
    return GPTConfig(
        block_size=sd["wpe.weight"].shape[0], vocab_size=vocab_size, n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd
    )


# -----------------------------------------------------------------------------
# From logits to log-probabilities: the one function every stage's loss starts from


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target | everything before it): logits (..., V), targets (...) -> (...), in fp32 (bf16 sums drift).
    For a whole sequence, the logits at position t predict the token at t + 1: pass logits[:, :-1], ids[:, 1:]."""
    # EXERCISE token_logprobs: log p(target) under softmax(logits), in fp32
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    # END EXERCISE token_logprobs


def sequence_logprob(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) = sum over response tokens t of log pi(y_t | x, y_<t), per sequence (B,), in fp32.

    The EOS that ends the response counts (it is how the model says "done"); prompt and padding do not
    (batch["response_mask"] is 1 on response tokens and the EOS only). The logits at position t predict
    token t + 1, hence the shift by one. DPO's loss is built from four of these (policy and reference, chosen
    and rejected: train_dpo.py); the evaluation's KL and knowledge probes use it too.
    """
    # EXERCISE sequence_logprob: log pi(y|x): the response tokens' log-probs summed per sequence
    ids = batch["input_ids"]  # (B, T)
    logits = model(ids, batch["attention_mask"])  # (B, T, V)
    logp = token_logprobs(logits[:, :-1], ids[:, 1:])  # (B, T-1): log pi(ids[t+1] | ids[<=t])
    return (logp * batch["response_mask"][:, 1:]).sum(dim=1)  # (B,)
    # END EXERCISE sequence_logprob


# -----------------------------------------------------------------------------
# Sampling: a pure function of (logits, generator, temperature, top_k, top_p)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus (smallest set with mass >= top_p)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # EXERCISE top_p: nucleus filtering: -inf outside the smallest set of tokens whose mass reaches top_p
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = mass_before >= top_p  # the first token always stays (its mass_before is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
        # END EXERCISE top_p
    return logits


def sample_next(logits, generator=None, temperature=1.0, top_k=None, top_p=None):
    """One token per row of logits (B, V) -> (ids (B,), log-probs (B,) under the sampling distribution).

    temperature 0 is greedy (argmax, ignores the generator). Filtering (top-k / top-p) changes the
    distribution: PPO samples with neither, or its KL estimate would be wrong. The generator must live on the
    logits' device (minipost/generation.py: make_generator): torch cannot draw on a GPU with a CPU generator.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if generator is not None and generator.device.type != logits.device.type:
        raise ValueError(f"a generator on {generator.device.type} cannot sample logits on {logits.device.type}: "
                         "make it with minipost.generation.make_generator(device, seed)")
    if temperature == 0:
        ids = logits.argmax(dim=-1)
        logps = F.log_softmax(logits, dim=-1)
    else:
        logps = F.log_softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)  # (B, V)
        ids = torch.multinomial(logps.exp(), num_samples=1, generator=generator).squeeze(-1)
    return ids, logps.gather(-1, ids[:, None]).squeeze(-1)


# -----------------------------------------------------------------------------
# A scalar head: the reward model and PPO's value model


class GPTScalar(nn.Module):
    """A GPT backbone with a linear head: one scalar per position, (B, T).

    The reward model reads the score at the last real token of prompt + response (the EOS); the value
    model reads every response position. `reward_shift`/`reward_scale` are buffers saved with the weights:
    train_rm.py sets them so that rewards of SFT samples have mean 0 and std 1, and every later load
    applies the same frozen normalization.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.gpt = GPT(config)  # its tied lm_head costs nothing; the head below is what is trained
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(config.n_embd + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("reward_shift", torch.zeros(()))
        self.register_buffer("reward_scale", torch.ones(()))

    def forward(self, idx, attention_mask=None) -> torch.Tensor:
        h = self.gpt.hidden_states(idx, attention_mask)  # (B, T, C)
        raw = self.head(h).squeeze(-1).float()  # (B, T)
        return (raw - self.reward_shift) / self.reward_scale

    @classmethod
    def from_pretrained(cls, path) -> "GPTScalar":
        """A GPT2ForSequenceClassification directory with one label -> GPTScalar: backbone from GPT.from_pretrained,
        head.weight = score.weight, head.bias = 0, shift 0, scale 1 (an export folded them into the weights). The pad
        row an export added is dropped, so the vocabulary (and its EOS id) is the model's own again. minipost reads
        the last real token from the mask, so its scores equal Hugging Face's on any padding."""
        path = Path(path)
        hf = read_hf_config(path / "config.json")
        from minipost.checkpoint import read_safetensors

        gpt = GPT.from_pretrained(str(path))  # raises ValueError / FileNotFoundError with the path
        tensors, _ = read_safetensors(path / "model.safetensors")
        score = tensors.get("score.weight")
        if score is None or tuple(score.shape) != (1, gpt.config.n_embd):
            got = "none" if score is None else tuple(score.shape)
            raise ValueError(f"{path}: a reward model needs score.weight of shape (1, {gpt.config.n_embd}), got {got}")
        cfg = gpt.config
        added = hf.get("minipost", {}).get("added_pad_token") if isinstance(hf.get("minipost"), dict) else None
        if added is not None:
            if added != cfg.vocab_size - 1:
                raise ValueError(f"{path}: added_pad_token {added} is not the last of {cfg.vocab_size} embeddings")
            cfg.vocab_size -= 1
        rm, backbone = cls(cfg), gpt.state_dict()
        with torch.no_grad():
            for key, p in rm.gpt.state_dict().items():  # wte (and the lm_head tied to it) without the pad row
                p.copy_(backbone[key][: p.shape[0]])
            rm.head.weight.copy_(score)
            rm.head.bias.zero_()
        return rm

    def score(self, idx, attention_mask) -> torch.Tensor:
        """Scalar at the last real token of each row (B,): found from the mask, never from token ids
        (pad id == EOS id). Works for right and left padding."""
        values = self(idx, attention_mask)  # (B, T)
        T = attention_mask.size(1)
        positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values  # (B,)
        return values.gather(1, last[:, None]).squeeze(1)


def read_hf_config(path) -> dict:
    """A Hugging Face directory's config.json as a dict ({} when missing or unreadable)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}


def is_sequence_classifier(path) -> bool:
    """True for a Hugging Face directory whose config.json names GPT2ForSequenceClassification."""
    return "GPT2ForSequenceClassification" in read_hf_config(Path(path) / "config.json").get("architectures", [])
