"""`TrainMeter`: the loss and error of the steps since the last train record, kept on the device."""

from __future__ import annotations

import math
import time

import torch

from resnetlab.train.distributed import Runtime


class TrainMeter:
    """Loss and error sums since the last train record, on the device: steps never wait for them.
    Reading them (`flush`, `finite`, `error_so_far`) sums them over the ranks."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # sum of loss * batch
        self.errors = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = 0  # examples
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, errors: torch.Tensor, n: int) -> None:
        self.loss_sum += loss.double() * n
        self.errors += errors
        self.count += n

    def _reduced(self, runtime: Runtime) -> tuple[float, float, float]:
        """(loss sum, errors, examples), summed over ranks."""
        count = torch.tensor(float(self.count), dtype=torch.float64, device=self.device)
        loss_sum, errors, n = runtime.all_reduce_sum(
            torch.stack([self.loss_sum, self.errors, count])
        ).tolist()
        return loss_sum, errors, n

    def finite(self, runtime: Runtime) -> bool:
        return math.isfinite(self._reduced(runtime)[0])

    def error_so_far(self, runtime: Runtime) -> float:
        _, errors, n = self._reduced(runtime)
        return errors / max(n, 1)

    def flush(self, runtime: Runtime) -> tuple[float, float, float]:
        """(mean loss, error fraction, images per second over all ranks) since the last flush."""
        loss_sum, errors, n = self._reduced(runtime)
        seconds = time.perf_counter() - self.started
        self._reset()
        n = max(n, 1)
        return loss_sum / n, errors / n, n / seconds
