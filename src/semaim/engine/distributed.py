"""torchrun / DistributedDataParallel plumbing: gloo on CPU, nccl on GPU; rank 0 writes everything."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    launched: bool = False  # started by torchrun: a process group, and DDP, even at world size 1

    @property
    def enabled(self) -> bool:
        return self.launched or self.world > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU if there is one, else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} asked for, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index >= count:  # else a traceback at the first tensor moved there
            here = (
                f"the CUDA devices here are cuda:0 to cuda:{count - 1}"
                if count > 1
                else "this machine has only cuda:0"
            )
            raise ConfigError(f"device: {spec!r} asked for, but {here}")
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun describes in the environment (or run alone when not launched
    by torchrun)."""
    if "WORLD_SIZE" not in os.environ:  # not launched by torchrun
        return DistInfo()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    # Under torchrun the same code path runs at any world size (DDP, all-reduces), so one GPU tests it too.
    info = DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", "0")), launched=True)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world
    return value


def all_reduce_sum(value: int, info: DistInfo, device: torch.device) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def all_agree(ok: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether every rank passes ``ok``: ranks that stop for different reasons still stop together."""
    if not info.enabled:
        return ok
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
