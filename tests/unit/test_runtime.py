"""Default torch threads: the cores this process may use, shared among the model processes."""

from __future__ import annotations

import os

import pytest

from shared.runtime import available_cores, default_threads


@pytest.mark.parametrize(("processes", "cores", "expected"), [
    (1, 1, 1),
    (1, 2, 1),     # 2 cores: one thread, the other core for everything else (4x faster under load here)
    (1, 4, 3),     # one core left for gRPC, Celery, the tokenizer
    (1, 16, 15),
    (12, 2, 1),    # `genstack up` on a small machine: never below one
    (12, 16, 1),
    (12, 24, 2),
    (4, 16, 4),
])
def test_threads_share_the_cores_among_model_processes(processes, cores, expected):
    assert default_threads(processes, cores) == expected


def test_cores_come_from_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this platform")
    assert available_cores() == len(os.sched_getaffinity(0))


def test_up_gives_each_process_its_share(monkeypatch, capsys):
    """`genstack up` sets GENSTACK_TORCH_THREADS for its children from the number of model processes."""
    import argparse

    from services.orchestrator import cli, stack

    monkeypatch.delenv("GENSTACK_TORCH_THREADS", raising=False)
    assert cli.up(argparse.Namespace(services=None, dry_run=True)) == 0
    model_processes = sum(1 for label, _ in stack.plan(None) if not label.startswith("orchestrator"))
    assert model_processes == 12
    assert f"(GENSTACK_TORCH_THREADS={default_threads(model_processes)} for each process)" in capsys.readouterr().out


def test_auto_dtype_is_float32_on_cpus_without_native_bf16(monkeypatch):
    from shared import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_dtype("auto", "cpu") == "float32"
    assert runtime.resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert runtime.resolve_dtype("bfloat16", "cpu") == "bfloat16"  # an explicit choice stays
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_dtype("auto", "cpu") == "bfloat16"


def test_native_bf16_is_read_from_the_cpu_flags():
    from shared import runtime

    flags = open("/proc/cpuinfo").read()
    assert runtime.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
