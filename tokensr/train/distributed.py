"""Data-parallel training across processes (torchrun / DDP environment).

Design: tasks call their submodules freely (``model.encoder(...)``, a frozen tokenizer, two
forwards of a discriminator per step), which ``DistributedDataParallel``'s module wrapping
would not see. So the engine keeps plain modules and synchronises explicitly:

- at start, every module's parameters and buffers are broadcast from rank 0;
- after the backward pass(es) of each optimizer step, the gradients of every optimizer's
  parameters are averaged across ranks (all-reduce on flattened buckets; a parameter without
  a gradient on some rank counts as zero there, so all ranks reduce the same tensors);
- after the step, every module's buffers (BatchNorm statistics, spectral-norm vectors, the
  quantizer's EMA codebook) are broadcast from rank 0, as DDP does for buffers.

Identical parameters + identical averaged gradients + identical optimizer code give
identical weights on every rank. :func:`check_in_sync` verifies it.

The process group comes from the torchrun environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

BUCKET_ELEMENTS = 1 << 24  # 16M values per all-reduce


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this engine created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init(device: torch.device, timeout_s: int = 1800) -> DistInfo:
    """Join (or create) the process group when running under torchrun with several ranks."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_world()[2], owns_group=False)
    rank, world, local = env_world()
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("process group: %s, rank %d of %d", backend, rank, world)
    return DistInfo(rank, world, local, owns_group=True)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        # every rank finishes its last collective before any rank tears gloo down: a rank that
        # destroys the group while a peer's send is still in flight can abort that peer
        # ("terminate called without an active exception", seen once in CI)
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """Group tensors of one dtype/device into buckets of at most BUCKET_ELEMENTS values."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in group:
            if bucket and size + t.numel() > BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel()
        if bucket:
            yield bucket


def average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the ``.grad`` of ``params`` across ranks, in place (a rank without a
    gradient for a parameter that others have contributes zeros)."""
    if not info.enabled or not params:
        return
    # which parameters got a gradient on at least one rank; the others stay None everywhere
    # (as in a single process, where the optimizer skips them)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    grads = []
    for p, h in zip(params, has.tolist(), strict=False):
        if h == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat.div_(info.world_size)
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def _broadcast_tensors(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Broadcast tensors from rank 0 in place (bool tensors travel as uint8)."""
    plain = [t for t in tensors if t.dtype != torch.bool]
    for bucket in _buckets(plain):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in bucket:
            n = t.numel()
            t.detach().copy_(flat[offset : offset + n].view_as(t))
            offset += n
    for t in tensors:
        if t.dtype == torch.bool:
            u = t.detach().to(torch.uint8)
            dist.broadcast(u, src=0)
            t.detach().copy_(u.bool())


def broadcast_modules(modules: dict[str, nn.Module], info: DistInfo, buffers_only: bool = False) -> None:
    """Make every rank's module states equal to rank 0's (parameters and/or buffers)."""
    if not info.enabled:
        return
    tensors: list[torch.Tensor] = []
    for name in sorted(modules):
        m = modules[name]
        if not buffers_only:
            tensors += [p.data for p in m.parameters()]
        tensors += [b for b in m.buffers()]
    _broadcast_tensors(tensors, info)


def check_in_sync(modules: dict[str, nn.Module], info: DistInfo) -> list[str]:
    """Names of the state entries that differ from rank 0's on any rank (empty: in sync).

    Every rank compares its tensors with rank 0's copy exactly (bit for bit)."""
    if not info.enabled:
        return []
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    for mname in sorted(modules):
        for k, v in modules[mname].state_dict(keep_vars=False).items():
            names.append(f"{mname}.{k}")
            tensors.append(v)
    bad = torch.zeros(len(names), dtype=torch.float32, device=tensors[0].device if tensors else "cpu")
    for i, t in enumerate(tensors):
        ref = t.detach().clone()
        if ref.dtype == torch.bool:
            ref = ref.to(torch.uint8)
        dist.broadcast(ref, src=0)
        own = t.detach().to(ref.dtype)
        if not torch.equal(own, ref):
            bad[i] = 1.0
    dist.all_reduce(bad)
    return [n for n, b in zip(names, bad.tolist(), strict=False) if b > 0]


def all_gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Gather one small picklable object per rank (used for per-rank RNG states)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "average_gradients",
    "barrier",
    "broadcast_modules",
    "broadcast_object",
    "check_in_sync",
    "env_world",
    "init",
    "shutdown",
]
