"""
Data-parallel training on several processes (GPUs, or CPU processes with gloo), without a framework.

Run any stage under torchrun and it trains on N processes at once:

    torchrun --nproc_per_node 8 train_sft.py --init gpt2 --data alpaca ...     # 8 GPUs, one node
    torchrun --nproc_per_node 2 train_sft.py --device cpu --steps 3 ...       # 2 CPU processes (gloo), to try it

Every rank holds the whole model. Each optimizer step, every rank draws the SAME global batch (the data
generator is seeded alike on every rank), keeps its own slice of it (`shard`), runs forward and backward on
that slice, and then the gradients are added up across ranks (`all_reduce_grads`) -- so every rank holds the
gradient of the whole global batch, takes the same optimizer step, and the weights stay identical without
ever being sent. The global batch size (--batch-size) means what it means in one process.

That is what torch's DistributedDataParallel does, minus its engineering: DDP buckets the gradients and
starts reducing them while backward is still running (overlapping communication with compute); here the
reduce is one visible loop after backward. The maths is the same. One difference of convention: DDP
AVERAGES gradients, which is right when each rank's loss is a mean over its own equal share. Our SFT, RM and
DPO losses are already each rank's share of the global batch's loss (divided by the GLOBAL token / pair
count, as gradient accumulation does), so they are SUMMED (average=False) -- the same numbers as one process,
even when the ranks hold different numbers of tokens. PPO and GRPO average like DDP (each rank's loss is a
mean over its own rollouts).

Without torchrun (no RANK / WORLD_SIZE in the environment) every function here does nothing: rank 0 of 1,
the data unsliced, the gradients untouched -- a single-process run is bit-for-bit what it was. Under torchrun,
even with one process (`torchrun --nproc_per_node 1`), the process group is joined and every collective runs:
a sum over one rank is the identity, so the numbers are the same, and one GPU can test the NCCL path.

Only rank 0 prints, logs, evaluates and writes checkpoints (`setup` silences the others' stdout).
"""

import os
import sys

import torch
import torch.distributed as dist

_rank, _world = 0, 1  # this process's rank and the number of processes; (0, 1) without torchrun
_joined = False  # in a process group (under torchrun): the collectives run, even over one rank
_device = torch.device("cpu")  # where this process's collectives run: NCCL reduces CUDA tensors, gloo CPU ones


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) and return this rank's device: cuda:LOCAL_RANK on GPUs (NCCL), the given device otherwise
    (gloo). Without torchrun: returns `device` unchanged and does nothing else.
    Apple's MPS has no collective backend (gloo would be handed MPS gradients and fail at the first
    all-reduce), so torchrun with --device mps is refused here, before any model loads."""
    global _rank, _world, _device, _joined
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return device
    if device.type == "mps":
        raise SystemExit("error: torchrun on MPS is not supported (torch has no collective backend for Apple GPUs); "
                         "run one process, or add --device cpu to run the ranks on the CPU")
    _rank, _world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _device, _joined = device, True
    if _rank != 0:  # only rank 0 speaks; the others' errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    return device


def cleanup():
    """Leave the process group at the end of training (no-op in one process). Rank 0 then carries on alone
    (evaluation, saves, DPO's beta sweep) as a process of one: the collectives above become no-ops."""
    global _world, _joined
    if dist.is_initialized():
        dist.destroy_process_group()
    _world, _joined = 1, False


def rank() -> int:
    return _rank


def world_size() -> int:
    return _world


def is_main() -> bool:
    """True on the rank that logs, evaluates and saves (always, in one process)."""
    return _rank == 0


def barrier():
    """Wait until every rank gets here (e.g. rank 0 has finished a save the others will read)."""
    if _joined:
        dist.barrier()


def shard(items: list) -> list:
    """This rank's slice of a global batch: contiguous, sizes differing by at most one. All of it in one process."""
    if not _joined:
        return items
    n = len(items)
    start, end = n * _rank // _world, n * (_rank + 1) // _world
    return items[start:end]


def seed_for_rank(seed: int) -> int:
    """A different seed on each rank for SAMPLING (rollouts), so the ranks don't all generate the same answers.
    Rank 0 keeps `seed`: one process samples what it always did. (Data order and init stay seeded alike.)"""
    return seed + 1000003 * _rank


def all_reduce_grads(model: torch.nn.Module, average: bool):
    """After backward: every parameter's .grad becomes the SUM over ranks (average=False) or the MEAN (True,
    as DistributedDataParallel). Every rank then takes the same optimizer step from the same gradient."""
    if not _joined:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # a parameter this rank's loss did not reach: it contributes zeros
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            if average:
                p.grad.div_(_world)


def sum_all(x):
    """A number (int / float / 0-d tensor) summed over ranks; returned as it came in one process. The sum is
    made in a float64 tensor on this process's device: NCCL reduces CUDA tensors only."""
    if not _joined:
        return x
    t = torch.as_tensor(x, dtype=torch.float64, device=_device).clone()  # on the backend's device (NCCL: CUDA)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return type(x)(t.item()) if isinstance(x, (int, float)) else t.to(x.dtype).to(x.device)


def mean_metrics(metrics: dict) -> dict:
    """Average each numeric metric over the ranks that have it (for the log line: rank 0 prints the mean of all
    ranks). A metric one rank could not measure (None) is averaged over the others."""
    if not _joined:
        return metrics
    every = [None] * _world
    dist.all_gather_object(every, metrics)  # small dicts of numbers: pickled, simplest and robust
    out = dict(metrics)
    for k in metrics:
        values = [m.get(k) for m in every]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            out[k] = sum(values) / len(values)
    return out


def broadcast_params(model: torch.nn.Module):
    """Copy rank 0's weights (and buffers) to every rank, as DDP's constructor does: the ranks start identical
    even if something drew different random numbers while building the model."""
    if not _joined:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def max_abs_param_diff(model: torch.nn.Module) -> float:
    """Largest difference between this rank's weights and rank 0's (0.0 in one process): a test's check that
    the ranks hold one identical model."""
    if not _joined:
        return 0.0
    diff = 0.0
    with torch.no_grad():
        for p in model.parameters():
            p0 = p.data.clone()
            dist.broadcast(p0, src=0)
            diff = max(diff, (p.data - p0).abs().max().item())
    t = torch.tensor(diff, dtype=torch.float64, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()
