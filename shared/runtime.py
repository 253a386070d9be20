"""Process-wide runtime knobs applied once, before the first model runs."""

from __future__ import annotations

import functools

from shared.config import get_settings


@functools.cache
def configure_torch() -> None:
    """Apply GENSTACK_TORCH_THREADS. Several model processes on few cores must not each spin as
    many OpenMP threads as there are cores: measured here, a prefill ran 7x slower with 2 threads
    than with 1 while another process kept both cores busy."""
    threads = get_settings().torch_threads
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
