"""Real process groups on loopback for the distributed tests.

Two launchers with one environment contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the code under test cannot tell them apart:
  spawn(fn, ...)     torch.multiprocessing: fn runs in each rank and returns tensors/containers;
  torchrun(args)     `python -m torch.distributed.run` on a command line, as users launch it.
Every address is loopback (spawn: 127.0.0.1; torchrun: --standalone on localhost), every rank
runs one thread (the CPU is shared), and everything started is killed on the way out, so a
failing test leaves no processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it) for a rank-0 store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Intra-op threads = 1 for a reference run in the test process, as each rank has; restored after.

    Besides matching the ranks, this keeps the reference fast on a shared CPU: with 2 OpenMP
    threads on 2 busy cores every parallel region waits for a descheduled thread (10-70x slower).
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun gives worker `rank` of a one-node group."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": LOOPBACK,
        "MASTER_PORT": str(port),
    }


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(rank_env(rank, world_size, port))
    torch.set_num_threads(1)
    torch.save(fn(*args), Path(out) / f"rank{rank}.pt")


def spawn(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 60) -> list[Any]:
    """fn(*args) in `world_size` fresh processes; each rank's return value, in rank order.

    fn must be importable (a module-level function) and return what torch.save can store and
    torch.load(weights_only=True) can read back. An exception in any rank fails the call.
    """
    with tempfile.TemporaryDirectory(prefix="ddp-spawn-") as out:
        context = mp.start_processes(
            _entry,
            args=(fn, world_size, free_port(), out, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{fn.__name__} did not finish on {world_size} ranks in {timeout:g} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def torchrun_command(args: Sequence[str], *, nproc: int = 2, launcher: Sequence[str] = ()) -> list[str]:
    """The one-node torchrun command line: `--standalone`, a c10d rendezvous whose store the agent
    binds to a free port itself. Picking a port here and handing it over would leave a window in
    which another process (a concurrent test's gloo pairs) can take it. With RESTARTABLE in the
    environment each restart gets a fresh store; see docs/scaling.md, "Fault tolerance"."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        *launcher,
        *args,
    ]


# torchrun's agent shares its store with the workers by default, and a restarted group can then
# read the failed attempt's worker addresses from it (pytorch/pytorch#135712); with the c10d
# rendezvous this makes rank 0 of each attempt host a fresh store instead.
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def quiet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, one thread per process, no launcher variables inherited from outside."""
    env = {k: v for k, v in os.environ.items() if k not in rank_env(0, 1, 0)}
    return {**env, "OMP_NUM_THREADS": "1", **(extra or {})}


@contextlib.contextmanager
def launched(
    command: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Start `command` in its own process group; kill the whole group (workers too) on exit.

    TMPDIR points at a folder removed afterwards: torchrun leaves a torchelastic_* folder there.
    """
    with tempfile.TemporaryDirectory(prefix="torchrun-") as scratch:
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=quiet_env({"TMPDIR": scratch, **(env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        outputs = pipe_names([proc.stdout, proc.stderr])  # while they are open: reading ends closes them
        try:
            yield proc
        finally:
            # torchrun starts each worker in a session of its own, out of killpg's reach, and a
            # worker whose agent is gone is nobody's child: found by the output pipes it shares
            # with the agent. One left alive would keep its gloo peer and a CPU busy, and hold
            # the pipes open, so that reading the output to its end would wait forever.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for pid in pipe_holders(outputs):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.communicate(timeout=60)


def torchrun(
    args: Sequence[str], *, cwd: Path, nproc: int = 2, launcher: Sequence[str] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `torchrun --nproc-per-node nproc [launcher...] args...` to completion (or kill it)."""
    command = torchrun_command(args, nproc=nproc, launcher=launcher)
    with launched(command, cwd=cwd) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


State = dict[str, torch.Tensor]


def drift(ours: State, theirs: State, start: State) -> float:
    """|ours - theirs| / |theirs - start| over all float tensors: how far two trainings that should
    agree ended apart, relative to how far training moved. fp32 rounding alone (summation order,
    thread count) gives ~1e-3 after a few dozen SGD steps; a wrong shard or gradient gives ~1."""
    keys = [k for k, v in theirs.items() if v.is_floating_point()]
    apart = sum(float((ours[k].double() - theirs[k].double()).square().sum()) for k in keys)
    moved = sum(float((theirs[k].double() - start[k].double()).square().sum()) for k in keys)
    return (apart / moved) ** 0.5


def pipe_names(pipes: Sequence[Any]) -> set[str]:
    """How /proc names `pipes` (our open ends of a child's output pipes): "pipe:[INODE]"."""
    return {f"pipe:[{os.fstat(pipe.fileno()).st_ino}]" for pipe in pipes if pipe is not None}


def pipe_holders(names: set[str]) -> list[int]:
    """pids of the other live processes that have one of the pipes `names` open: a child and
    whatever it started, in any session or none (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) in names for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def worker_pids(agent: int) -> dict[int, int]:
    """{RANK: pid} of the live workers torchrun's agent process `agent` started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the "(comm)" field
            env = (entry / "environ").read_bytes().split(b"\0") if parent == agent else []
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not ours to read
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found
