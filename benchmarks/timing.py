"""Wall time of a call, waiting for a GPU's queued work so that it is counted where it was asked for."""
from __future__ import annotations

import math
import time
from typing import Callable, TypeVar

import torch

Result = TypeVar("Result")


def sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(call: Callable[[], Result], device: str, repeats: int = 1) -> tuple[Result, float]:
    """(result of the last call, the fastest wall time of `repeats` calls)."""
    best, result = math.inf, None
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        result = call()
        sync(device)
        best = min(best, time.perf_counter() - began)
    return result, best
