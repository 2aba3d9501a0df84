"""Training: this process's place in a torchrun job (multi-GPU DistributedDataParallel).

Reads the WORLD_SIZE, RANK and LOCAL_RANK variables torchrun sets and the requested device;
produces a ``DistInfo`` (rank 0 of 1 without torchrun), joins the process group when there
is more than one process, picks this rank's device and waits for the other ranks
(``barrier``). Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from pipeline.models import choose_device


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group when torchrun set WORLD_SIZE > 1; else rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(rank, world_size, local_rank)


def rank_device(requested: str, info: DistInfo) -> torch.device:
    """The device ``requested`` (``choose_device``); under torchrun, this rank's own GPU."""
    device = choose_device(requested)
    if info.world_size > 1 and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (nothing to wait for with one process)."""
    if info.world_size > 1:
        dist.barrier()
