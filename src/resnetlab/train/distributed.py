"""Where this process runs: device, rank and world size, decided once (torchrun's env contract).

Single-process runs and `torchrun --nproc-per-node N [--nnodes M ...] -m resnetlab train ...`
take the same path: `setup_runtime` reads the variables torchrun sets for each worker

  RANK, WORLD_SIZE        this process's global rank and the number of processes
  LOCAL_RANK              its rank on this node; picks the GPU (cuda:LOCAL_RANK)
  MASTER_ADDR/PORT        where rank 0's rendezvous store listens
  TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS
                          how often torchrun has restarted the worker group (--max-restarts)

and starts a PyTorch process group: NCCL on CUDA, gloo on the CPU. Everything rank-dependent
goes through the `Runtime` it returns, so the training loop never asks torch.distributed directly.
Without RANK and WORLD_SIZE it is one process, and nothing distributed is started.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from resnetlab.errors import Error

T = TypeVar("T")

# How long the other ranks wait for rank 0 to prepare the data (`Runtime.main_first`).
MAIN_FIRST_TIMEOUT = timedelta(hours=2)
_LAUNCH_HINT = "launch with `torchrun --nproc-per-node N -m resnetlab ...`, which sets all of them"


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart_count: int = 0  # times torchrun has restarted the worker group after a failure
    max_restarts: int = 0  # torchrun --max-restarts: 0 means a failed worker ends the run

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes logs, checkpoints, figures and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str | None:
        """The process-group backend: nccl for CUDA tensors, gloo for CPU ones, None on one process."""
        if not self.distributed:
            return None
        return "nccl" if self.device.type == "cuda" else "gloo"

    def barrier(self) -> None:
        if self.distributed:
            # NCCL needs to know the device, or it guesses one from the rank (and warns).
            ids = [self.device.index] if self.device.type == "cuda" else None
            dist.barrier(device_ids=ids)

    def main_first(self, load: Callable[[], T]) -> T:
        """`load()` on rank 0, then on the others: only one process downloads missing files.

        The others wait in a gloo group of their own, whose deadline is `MAIN_FIRST_TIMEOUT`: rank
        0's download or scan of a large image folder may outlast NCCL's 10-minute watchdog, which
        would kill ranks waiting in the training group. A failing rank 0 still ends the group at
        once, since torchrun stops the other workers when one exits.
        """
        if not self.distributed:
            return load()
        group = dist.new_group(backend="gloo", timeout=MAIN_FIRST_TIMEOUT)
        try:
            if not self.is_main:
                dist.barrier(group=group)
            result = load()
            if self.is_main:
                dist.barrier(group=group)
        finally:
            dist.destroy_process_group(group)
        return result

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (a no-op on one process) and return it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (same shape and dtype on all), stacked in rank order on the CPU:
        (world_size, *tensor.shape). Goes through the device, since NCCL moves only CUDA tensors."""
        if not self.distributed:
            return tensor.unsqueeze(0).cpu()
        local = tensor.to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return torch.stack(gathered).cpu()

    def all_gather_object(self, obj: object) -> list[object]:
        """Every rank's picklable `obj`, in rank order (the ranks are this run's own processes)."""
        if not self.distributed:
            return [obj]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's value of a picklable object on every rank (run-dir names, errors, paths)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Overwrite `module`'s buffers (BN running statistics) with rank 0's, in place.

        DDP keeps the parameters equal on every rank, but each rank's BN statistics come from its
        own batches; before an evaluation every rank must hold the same model, rank 0's.
        """
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def check_sync_bn(self) -> None:
        """Refuse --sync-bn where it cannot run, before any work is done: PyTorch's SyncBatchNorm
        is CUDA-only (one process has nothing to synchronise, so there it is simply off)."""
        if self.distributed and self.device.type != "cuda":
            raise Error("--sync-bn needs CUDA devices (PyTorch has no SyncBatchNorm on the CPU); drop it")

    def wrap(self, model: nn.Module, *, sync_bn: bool = False) -> nn.Module:
        """DistributedDataParallel on many processes; the model itself on one.

        DDP broadcasts rank 0's parameters and buffers when it is built, so every rank starts
        from the same weights, and averages the gradients over ranks in backward. `sync_bn`
        swaps BatchNorm for SyncBatchNorm in place (same parameters, same state-dict keys), so
        BN statistics come from the global batch; PyTorch implements it for CUDA only.
        """
        if not self.distributed:
            return model
        if sync_bn:
            self.check_sync_bn()
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
    """`auto` picks cuda:LOCAL_RANK when CUDA is there, else the CPU; `cuda` means cuda:LOCAL_RANK.

    A CUDA device also becomes the current one (torch.cuda.set_device), so that what runs without
    an explicit device uses it and not GPU 0: the DataLoader's pin-memory thread, and NCCL.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    prefix, colon, index = name.partition(":")
    if prefix != "cuda" or (colon and not index.isdigit()):
        raise Error(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise Error("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
    count = torch.cuda.device_count()
    if not index and local_rank >= count:
        raise Error(
            f"LOCAL_RANK={local_rank} but only {count} GPU(s) are visible; "
            f"start at most {count} processes per node (--nproc-per-node {count})"
        )
    if index and int(index) >= count:
        raise Error(f"--device {name}: only {count} GPU(s) are visible, cuda:0 to cuda:{count - 1}")
    device = torch.device("cuda", int(index) if index else local_rank)
    torch.cuda.set_device(device)
    return device


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise Error(f"environment variable {name}={text!r} is not an integer; {_LAUNCH_HINT}") from None


def _check_env(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; a half-set contract is an `Error`."""
    if ("RANK" in env) != ("WORLD_SIZE" in env):
        given, missing = ("RANK", "WORLD_SIZE") if "RANK" in env else ("WORLD_SIZE", "RANK")
        raise Error(f"{given} is set but {missing} is not; {_LAUNCH_HINT}, or unset {given}")
    rank = _env_int(env, "RANK", 0)
    world_size = _env_int(env, "WORLD_SIZE", 1)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise Error(f"RANK={rank} and WORLD_SIZE={world_size} need 0 <= RANK < WORLD_SIZE; {_LAUNCH_HINT}")
    if local_rank < 0:
        raise Error(f"LOCAL_RANK={local_rank} must be >= 0; {_LAUNCH_HINT}")
    if world_size > 1:
        missing = [name for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise Error(f"WORLD_SIZE={world_size} but {', '.join(missing)} {verb} not set; {_LAUNCH_HINT}")
    return rank, world_size, local_rank


def setup_runtime(device: str = "auto") -> Runtime:
    """Decide device and rank from torchrun's variables; start the process group under torchrun."""
    rank, world_size, local_rank = _check_env(os.environ)
    if world_size > 1 and device.startswith("cuda:"):
        raise Error(
            f"--device {device} would put all {world_size} ranks on one GPU (NCCL refuses that); "
            "under torchrun use --device cuda, which gives each rank cuda:LOCAL_RANK"
        )
    runtime = Runtime(
        device=resolve_device(device, local_rank),
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        restart_count=_env_int(os.environ, "TORCHELASTIC_RESTART_COUNT", 0),
        max_restarts=_env_int(os.environ, "TORCHELASTIC_MAX_RESTARTS", 0),
    )
    if runtime.distributed and not dist.is_initialized():
        _join_group(runtime, os.environ)
    return runtime


def _join_group(runtime: Runtime, env: Mapping[str, str]) -> None:
    """init_process_group through torchrun's env:// contract; a failure is one `Error`."""
    if runtime.backend == "nccl" and not dist.is_nccl_available():
        raise Error("this torch build has no NCCL for multi-GPU training; use --device cpu (gloo)")
    try:
        dist.init_process_group(backend=runtime.backend, rank=runtime.rank, world_size=runtime.world_size)
    except (RuntimeError, ValueError) as exc:  # DistNetworkError, DistStoreError, bad addresses
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        advice = "check that every node uses the same --master-addr/--rdzv-endpoint and that the port is free"
        if runtime.restart_count and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # The agent's store outlives the failed attempt, keys and all (pytorch/pytorch#135712).
            advice = (
                f"on restart {runtime.restart_count}, torchrun's shared store may still hold the failed "
                "workers' addresses; launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and "
                "--rdzv-backend c10d (docs/scaling.md)"
            )
        address = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
        raise Error(
            f"rank {runtime.rank} could not join the {runtime.backend} process group at {address} "
            f"({reason}); {advice}"
        ) from None


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
