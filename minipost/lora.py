"""
LoRA, written from scratch (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3).

A frozen weight W (out, in) learns only a low-rank update:

    h = W x + (alpha / r) * B A x        A (r, in) ~ small random,  B (out, r) = 0 at the start

so at step 0 the model IS the pre-trained one (B = 0), and training moves r * (in + out) numbers per matrix
instead of in * out. With r = 8 on gpt2's attention and MLP matrices that is ~1.3% of the weights -- and
AdamW's two moments and the gradients exist for those alone, which is where the memory goes (docs/scale.md).

What this file gives the training scripts:
  * `apply_lora(model, rank, alpha, targets)`: swap the targeted nn.Linear layers for LoRALinear (the same
    weight and bias tensors, plus A and B) and freeze everything but the adapters (and `train_also`, e.g.
    the reward / value head).
  * `adapters_off(model)`: a context manager in which every adapter is bypassed -- the network is the frozen
    model it started from. DPO, PPO and GRPO use it as their frozen REFERENCE (`ReferenceView`): no second
    copy of the weights.
  * `merged_state_dict(model)`: W + (alpha / r) B A folded into plain weights, for a checkpoint that loads
    into an ordinary GPT (the default save); `adapter_state_dict` saves the adapters alone (--lora-save adapters).

Key names stay GPT-2's: a LoRALinear IS an nn.Linear (its `weight` and `bias` are the frozen base), with
`lora_A` and `lora_B` beside them. Simplifications: no LoRA dropout; the tied embedding / lm_head is never
adapted (it is frozen).
"""

import math
from contextlib import contextmanager

import torch
import torch.nn as nn

# --lora-targets names -> the nn.Linear layers of each block they adapt (GPT-2's names)
TARGETS = {
    "attn": ("attn.c_attn",),  # the fused q, k, v projection (the LoRA paper adapts W_q and W_v)
    "proj": ("attn.c_proj",),  # attention's output projection
    "mlp": ("mlp.c_fc", "mlp.c_proj"),  # both MLP matrices
}


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha / r) * x A^T B^T. `weight` and `bias` are the frozen base; lora_A, lora_B train."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)  # not nn.Linear's: the base's tensors are reused below, not re-created
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init (and the paper's code)
        self.enabled = True  # False inside adapters_off(): the frozen base alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # W x + b, (..., out)
        if not self.enabled:
            return y
        # x A^T is (..., r): the low-rank bottleneck; two thin matmuls, never the (out, in) product B A
        return y + (x @ self.lora_A.t().to(x.dtype) @ self.lora_B.t().to(x.dtype)) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, (out, in): the plain weight that computes what this layer computes."""
        return self.weight + self.scale * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, scale={self.scale:g}"


def parse_targets(s: str) -> list[str]:
    """'attn,proj,mlp' -> the names, checked (an argparse type)."""
    names = [t.strip() for t in s.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        import argparse

        raise argparse.ArgumentTypeError(f"unknown LoRA targets {unknown or s!r}; choose from {', '.join(TARGETS)}")
    return names


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: list[str], train_also: tuple[str, ...] = ()):
    """Replace the targeted Linear layers of every block by LoRALinear (in place) and freeze everything except
    the adapters and the parameters whose names start with one of `train_also` (e.g. "head"). Returns model."""
    suffixes = tuple(name for t in targets for name in TARGETS[t])
    for block_name, block in [(n, m) for n, m in model.named_modules() if n.split(".")[-2:-1] == ["h"]]:
        for suffix in suffixes:
            parent_name, attr = suffix.rsplit(".", 1)
            parent = block.get_submodule(parent_name)
            layer = getattr(parent, attr)
            if not isinstance(layer, LoRALinear):
                setattr(parent, attr, LoRALinear(layer, rank, alpha))
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or name.startswith(train_also))
    return model


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


@contextmanager
def adapters_off(model: nn.Module):
    """Inside: every LoRALinear computes W x + b alone -- the model is the frozen one it started from."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(layers, before):
            m.enabled = e


class ReferenceView:
    """The frozen reference of DPO / PPO / GRPO as the policy itself with its adapters off: no second copy.

    It answers what the scripts ask of a reference model (calling it, generate, hidden_states, config,
    state_dict = the frozen weights, for the evaluation's fingerprint). `.eval()` and `.requires_grad_(False)`
    (common.frozen) do nothing: they must not freeze the policy's adapters. Use it under torch.no_grad().
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.lm_head = getattr(model, "lm_head", None)  # never adapted (the tied embedding is frozen)

    def __call__(self, *args, **kwargs):
        with adapters_off(self.model):
            return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with adapters_off(self.model):
            return self.model.generate(*args, **kwargs)

    def hidden_states(self, *args, **kwargs):
        with adapters_off(self.model):
            return self.model.hidden_states(*args, **kwargs)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if ".lora_" not in k}

    def parameters(self):
        return (p for n, p in self.model.named_parameters() if ".lora_" not in n)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def requires_grad_(self, flag: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self


def merged_state_dict(model: nn.Module) -> dict:
    """The model's state dict with each adapted weight replaced by W + (alpha/r) B A and no lora_ keys: it loads
    into the plain model (no LoRA) and computes the same function (up to float rounding)."""
    sd = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, LoRALinear):
                sd[f"{name}.weight"] = m.merged_weight().detach()
    return sd


def adapter_state_dict(model: nn.Module) -> dict:
    """The adapters alone (lora_A, lora_B) and whatever else trains (a reward / value head): a small file."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} | \
                {n for n in model.state_dict() if ".lora_" in n}
    normalization = ("reward_shift", "reward_scale")  # a reward model's buffers, set after training
    return {k: v for k, v in model.state_dict().items() if k in trainable or k.endswith(normalization)}


def load_adapters(model: nn.Module, state: dict):
    """Put saved adapters (adapter_state_dict) back into a model that has LoRA applied; names must all fit."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise KeyError(f"adapter keys the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


class SaveView:
    """What common.save_stage writes for a LoRA model: the merged weights (or the adapters alone) under the model's
    config. It has the two things a save reads: .config and .state_dict()."""

    def __init__(self, model: nn.Module, how: str):
        self.config, self.model, self.how = model.config, model, how

    def state_dict(self) -> dict:
        return merged_state_dict(self.model) if self.how == "merged" else adapter_state_dict(self.model)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a tied weight counts once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def lora_config(args, base: str) -> dict:
    """What config.json records of a LoRA run: enough to rebuild the model and load adapters-only checkpoints."""
    return {"rank": args.lora_rank, "alpha": args.lora_alpha, "targets": list(args.lora_targets),
            "saved": args.lora_save, "base": base}
