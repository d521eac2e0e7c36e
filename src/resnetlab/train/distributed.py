"""Where this process runs: device, rank and world size, decided once (torchrun's env contract).

Single-process runs and `torchrun --nproc-per-node N -m resnetlab train ...` take the same path:
`setup_runtime` reads RANK / WORLD_SIZE / LOCAL_RANK when torchrun set them and starts a
PyTorch process group (NCCL on CUDA, gloo on CPU). Everything rank-dependent goes through the
`Runtime` it returns, so the training loop never asks torch.distributed directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from resnetlab.errors import Error


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes logs, checkpoints, figures and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (a no-op on one process) and return it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's value of a picklable object on every rank (used for run-dir names, seeds)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, *, sync_bn: bool = False) -> nn.Module:
        """DistributedDataParallel on many processes; the model itself on one."""
        if not self.distributed:
            return model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and torch.compile wrappers, so checkpoints never depend on them."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` picks cuda:LOCAL_RANK when CUDA is there, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Error("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise Error(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def setup_runtime(device: str = "auto") -> Runtime:
    """Decide device and rank; starts the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """This rank's disjoint, rank-strided part of an epoch's permutation.

    The tail that does not divide evenly is dropped so every rank takes the same number of
    steps (DDP needs that); evaluation uses `eval_shard`, which drops nothing.
    """
    usable = len(indices) - len(indices) % runtime.world_size
    return indices[runtime.rank : usable : runtime.world_size]


def eval_shard(n: int, runtime: Runtime) -> range:
    """Indices this rank evaluates: every sample exactly once across ranks, no padding duplicates."""
    return range(runtime.rank, n, runtime.world_size)
