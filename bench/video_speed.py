"""Video generation speed at the service's default settings: seconds per clip and denoising steps/s.

    python bench/video_speed.py [--runs 3] [--threads 1] [--steps 25]

Runs VideoCore.generate in-process (16 frames, 32x32, DDIM, guidance 1.5, MP4 output: what a
request with no options gets) and reports the median of --runs clips after one warm-up clip, with
the phase timings (denoise, metrics, encode). Side by side in the same run: shared against
independent starting noise (the coherence technique should cost nothing) and guidance 1.5 against
no guidance (two UNet passes per step against one).
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

from services.video.core import VideoCore, VideoRequest  # noqa: E402
from services.video.settings import VideoSettings  # noqa: E402

PROMPT = "a red circle moving right on a blue background"


def measure(core: VideoCore, runs: int, **kw) -> dict:
    results = [core.generate(VideoRequest(prompt=PROMPT, seed=i, **kw)) for i in range(runs)]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    return {
        "seconds_per_clip": med([r.seconds_per_clip for r in results]),
        "steps_per_second": med([r.steps_per_second for r in results]),
        **{f"{k}_ms": med([r.timings[k] for r in results]) for k in ("denoise", "metrics", "encode")},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the service's, 25)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    core = VideoCore(VideoSettings(model=args.model, torch_threads=args.threads))
    core.generate(VideoRequest(prompt=PROMPT, seed=99, steps=2))  # warm-up
    steps = args.steps or core.settings.default_steps
    print(f"model {core.source()} · 16 frames 32x32 · DDIM {steps} steps · median of {args.runs} · "
          f"{torch.get_num_threads()} thread(s)")
    cases = [
        ("defaults (shared noise, guidance 1.5, MP4)", {}),
        ("independent noise", {"frame_noise": "independent"}),
        ("no guidance (1.0)", {"guidance_scale": 1.0}),
    ]
    print("| case | s/clip | steps/s | denoise ms | metrics ms | encode ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for label, kw in cases:
        m = measure(core, args.runs, steps=steps, **kw)
        base = base or m
        ratio = m["seconds_per_clip"] / base["seconds_per_clip"]
        print(f"| {label} | {m['seconds_per_clip']:.2f} ({ratio:.2f}x) | {m['steps_per_second']:.2f} | "
              f"{m['denoise_ms']:.0f} | {m['metrics_ms']:.0f} | {m['encode_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
