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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX). Without it (AVX2 machines)
    torch emulates bf16 matmuls: measured here, Qwen2.5-0.5B prefilled 400 tokens at 8 tok/s in
    bfloat16 against 61 tok/s in float32 on one thread (bench/RESULTS.md, Generator dtype)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    words = set(flags.split())
    return bool({"avx512_bf16", "amx_bf16"} & words)


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """A dtype setting with "auto" resolved: bfloat16 on accelerators and on CPUs with native bf16,
    float32 elsewhere (half the weight memory is not worth an 8x slower prefill).

    The price of bfloat16: batched rounding flips greedy near-ties, so with the continuous-batching
    engine a greedy answer can depend on what else is in the batch (35 of 100 prompts within 16 tokens
    on a CPU with native bf16, none in float32; bench/RESULTS.md). float32 was no answer there: its
    small-batch matmuls ran 5-14x slower than bf16's, and 8 streams gave 2.5x one stream instead of
    4.8x. GENSTACK_GENERATOR_DTYPE=float32 buys batch-independent greedy output for that speed."""
    if name != "auto":
        return name
    if not device.startswith("cpu"):
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"
