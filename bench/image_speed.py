"""Image generation speed on this machine: seconds per image and denoising steps per second.

    python bench/image_speed.py [--runs 5] [--steps 25]

Through the service core (what a request costs: validation, denoising, PNG encoding), at the
default model's native size and default steps, per scheduler, one image per request vs a batch of
four, interleaved runs, medians. Timings on shared CPUs are noisy: compare rows of the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from services.image.core import ImageCore, ImageRequest  # noqa: E402
from services.image.settings import ImageSettings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="default: the service's default steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    core = ImageCore(ImageSettings(model=args.model))
    core.warm_up()
    steps = args.steps or core.settings.default_steps
    size = core.default_size()
    cases = [(s, n) for s in ("ddim", "dpm-solver++", "euler") for n in (1, 4)]
    prompt = "a green triangle on an orange background"
    core.generate(ImageRequest(prompt=prompt, steps=2, seed=0))  # first-call allocations
    spi: dict[tuple, list[float]] = {c: [] for c in cases}
    sps: dict[tuple, list[float]] = {c: [] for c in cases}
    for run in range(args.runs):  # interleaved, so load changes hit every case alike
        for sched, n in cases:
            r = core.generate(ImageRequest(prompt=prompt, steps=steps, seed=run, scheduler=sched, num_images=n))
            spi[(sched, n)].append(r.seconds_per_image)
            sps[(sched, n)].append(r.steps_per_second)
    print(f"model {core.source()} · {size}x{size} · {steps} steps · guidance {core.settings.default_guidance_scale} · "
          f"torch threads {torch.get_num_threads()} · {args.runs} runs, medians\n")
    print("| scheduler | images/request | s/image | denoising steps/s | vs ddim x1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(spi[("ddim", 1)])
    for sched, n in cases:
        m = statistics.median(spi[(sched, n)])
        print(f"| {sched} | {n} | {m:.3f} | {statistics.median(sps[(sched, n)]):.1f} | {m / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
