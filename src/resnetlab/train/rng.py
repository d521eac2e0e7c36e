"""Every rank's global RNG streams, saved with each checkpoint and restored on resume, so a resumed
run draws the same stochastic-depth masks as one that never stopped."""

from __future__ import annotations

import torch

from resnetlab.train.distributed import Runtime


def gather_rng_states(runtime: Runtime) -> dict[str, torch.Tensor]:
    """Every rank's global RNG states, one row per rank: {"cpu": (world, n) uint8, "cuda": ...}.
    A collective: every rank must call it."""
    states = {"cpu": runtime.all_gather(torch.get_rng_state())}
    if runtime.device.type == "cuda":
        states["cuda"] = runtime.all_gather(torch.cuda.get_rng_state(runtime.device))
    return states


def restore_rng_states(states: dict[str, torch.Tensor], runtime: Runtime) -> None:
    """This rank's row of `gather_rng_states`. A rank the checkpoint has no row for (the group
    grew) keeps the stream seeded from `cfg.seed + rank`, as a fresh run would give it."""
    for kind, rows in states.items():
        rows = rows if rows.ndim == 2 else rows.unsqueeze(0)  # checkpoints before per-rank states
        if runtime.rank >= len(rows):
            continue
        # A copy, not the row view: torch 2.13's set_rng_state mishandles a tensor that starts past
        # the beginning of its storage (rows 1.. here): "Invalid mt19937 state", or a segfault.
        state = rows[runtime.rank].clone()
        if kind == "cpu":
            torch.set_rng_state(state)
        elif kind == "cuda" and runtime.device.type == "cuda":
            torch.cuda.set_rng_state(state, runtime.device)
