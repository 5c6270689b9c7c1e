"""Gathering evaluation features across processes so that every sample counts exactly once.

Works with and without a process group: every function is the identity (or a no-op) when
``torch.distributed`` is unavailable or not initialised. Backends: gloo (CPU tensors) and nccl (tensors are moved to
the current CUDA device for the collective and moved back afterwards).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group is initialised (and has more than one process)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    """Device the process group's backend communicates on (CUDA for nccl, CPU otherwise)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_variable(tensor: Tensor) -> list[Tensor]:
    """All-gather tensors whose first dimension differs across ranks (pad to the max, gather, trim).

    tensor: (n_rank, *rest), dtype equal on every rank and ``rest`` equal on every rank that has rows (a rank
    with no rows may pass any ``rest``, e.g. (0, 0, D)). Returns one tensor per rank, in rank order, on the
    input's device.
    """
    if not is_distributed():
        return [tensor]
    world = dist.get_world_size()
    dev = _comm_device()
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=dev)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes_l = [s.tolist() for s in shapes]
    counts = [s[0] for s in shapes_l]
    with_rows = [s[1:] for s in shapes_l if s[0] > 0]
    rest = with_rows[0] if with_rows else list(tensor.shape[1:])
    if any(r != rest for r in with_rows):
        raise ValueError(f"all_gather_variable: trailing shapes differ across ranks: {shapes_l}")
    padded = torch.zeros((max(counts), *rest), dtype=tensor.dtype, device=dev)
    if tensor.shape[0] > 0:
        padded[: tensor.shape[0]] = tensor.to(dev)
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[:c].to(tensor.device) for o, c in zip(out, counts)]


def all_gather_cat(tensor: Tensor, chunk: int | None = None) -> Tensor:
    """Concatenation (in rank order) of every rank's ``tensor`` along dim 0.

    chunk: gather at most this many rows per rank at a time (bounds accelerator memory for large CPU tensors,
    e.g. video tokens); None gathers everything at once.
    """
    if not is_distributed():
        return tensor
    if chunk is None:
        return torch.cat(all_gather_variable(tensor))
    # every rank must take part in the same number of collectives: agree on the largest row count first
    dev = _comm_device()
    n = torch.tensor([tensor.shape[0]], dtype=torch.long, device=dev)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    max_n = int(n.item())
    parts: list[list[Tensor]] = []
    for start in range(0, max(max_n, 1), chunk):
        parts.append(all_gather_variable(tensor[start:start + chunk]))
    world = dist.get_world_size()
    return torch.cat([p[r] for r in range(world) for p in parts])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over ranks (a new tensor on the input's device); the input itself without a group."""
    if not is_distributed():
        return tensor
    t = tensor.to(_comm_device()).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device)


def dedup_sorted(index: Tensor) -> Tensor:
    """Positions that keep the first occurrence of each value of ``index`` (N,), ordered by increasing value.

    DistributedSampler pads a shard by repeating samples; ``features[dedup_sorted(index)]`` holds each sample once,
    sorted by its index.
    """
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[keep]


def gather_by_index(index: Tensor, *features: Tensor, chunk: int | None = 64) -> tuple[Tensor, ...]:
    """Gather per-sample features from every rank, keep each sample once, sort by sample index.

    index: (n_rank,) long; features: (n_rank, ...) each (any device; results come back on each input's device).
    chunk: rows per rank per collective for the features (memory bound); None = all at once.
    Returns (index (N,), *features (N, ...)) with unique, increasing indices.
    """
    all_index = all_gather_cat(index.long())
    gathered = [all_gather_cat(f, chunk=chunk) for f in features]
    keep = dedup_sorted(all_index.cpu())
    out = [all_index[keep.to(all_index.device)]]
    out += [g[keep.to(g.device)] for g in gathered]
    return tuple(out)


def row_range(n: int, rank: int | None = None, world: int | None = None) -> range:
    """Contiguous block of ``range(n)`` handled by ``rank`` (official split: step = n // world + 1)."""
    r, w = rank_and_world()
    rank = r if rank is None else rank
    world = w if world is None else world
    step = n // world + 1
    start = min(n, rank * step)
    return range(start, min(n, start + step))
