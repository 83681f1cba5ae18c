"""PyTorch DDP under ``torchrun``: process-group set-up and the rank helpers the loop needs.

``fit`` calls :func:`setup` first. Launched by ``torchrun --nproc_per_node=N`` (which sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``) it joins the process group (NCCL on CUDA, gloo on the
CPU) and picks ``cuda:LOCAL_RANK``; started as a plain process it does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "all_min"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True under a multi-process launch."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes checkpoints, logs and plots."""
        return self.rank == 0


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one; return the info and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(world, rank, local_rank), device


def all_min(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Logical AND of ``flag`` over all ranks (so every rank takes the same branch)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
