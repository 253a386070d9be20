"""Process-wide runtime knobs applied once, before the first model runs."""

from __future__ import annotations

import functools
import os

from shared.config import get_settings


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow),
    not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def default_threads(model_processes: int = 1, cores: int | None = None) -> int:
    """torch threads per process when GENSTACK_TORCH_THREADS is 0 (auto).

    The cores are shared by the model processes, and one core is left to everything else (the
    gRPC and Celery threads, the tokenizer, other programs) when there are more than two. OpenMP
    threads spin while they wait for each other, so a thread that has to share its core with
    another busy process slows every step down: measured here (bench/threads.py, bench/RESULTS.md),
    two threads next to a busy neighbour on 2 cores decoded at a fraction of one thread's speed.
    """
    cores = available_cores() if cores is None else cores
    spare = cores - 1 if cores > 2 else 1
    return max(1, min(spare, cores // max(1, model_processes)))


@functools.cache
def configure_torch() -> None:
    """Apply GENSTACK_TORCH_THREADS (0 = auto: `default_threads()`, which `genstack up` narrows per
    process by setting GENSTACK_TORCH_THREADS for each one it starts)."""
    import torch

    threads = get_settings().torch_threads
    torch.set_num_threads(threads if threads > 0 else default_threads(1))
