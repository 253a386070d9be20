"""Prompt faithfulness and temporal coherence of the video model: does the clip show what the prompt says,
and does it hold together over time?

    python bench/video_quality.py [--prompts 120] [--steps 15] [--guidance 1.5] [--noise both]

Held-out shape x colour x background x direction combinations (never drawn in training), written in
sentence shapes never used in training, half of them with synonyms never used in training
("crimson", "disc", "westward"). A procedural checker (services.video.scenes.track) follows the
object through the 16 frames and reads its direction (a straight-line fit to its centroids), its
colour, the background colour and its shape kind. Chance: direction 25 %, colours 12.5 %, shape 33 %.

Coherence (services.video.metrics): background flicker, mean SSIM of consecutive frames and track
smoothness, for the same prompts and seeds with the coherence technique (noise shared across
frames) and without it (independent noise), side by side (`--noise both`).

Clips are generated in batches straight through the service's pipeline, with the starting noise the
service builds (VideoCore.initial_noise; seed = the prompt's index), so a figure here is what a
request with that seed gets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.video import metrics, scenes  # noqa: E402
from services.video.core import VideoCore, VideoRequest  # noqa: E402
from services.video.settings import VideoSettings  # noqa: E402


def generate(core: VideoCore, items, steps: int, guidance: float, noise: str, share: float, batch: int,
             seed0: int = 0) -> list[np.ndarray]:
    """[F, H, W, 3] uint8 clips, one per prompt (seed = seed0 + the prompt's index)."""
    pipe = core.pipeline()
    pipe.scheduler = core._scheduler(pipe, "ddim")
    clips = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        latents = torch.cat([
            core.initial_noise(pipe, core.resolve(VideoRequest(
                prompt=it.prompt, seed=seed0 + start + i, frame_noise=noise, noise_share=share)))
            for i, it in enumerate(chunk)])
        with torch.inference_mode():
            frames = pipe([it.prompt for it in chunk], num_frames=scenes.FRAMES, num_inference_steps=steps,
                          guidance_scale=guidance, latents=latents, output_type="np").frames
        clips += [(np.clip(np.asarray(c), 0, 1) * 255).round().astype(np.uint8) for c in frames]
        print(f"  {noise}: {len(clips)}/{len(items)} clips, so far {row('', score(items[:len(clips)], clips))}",
              flush=True)
    return clips


def score(items, clips) -> dict:
    tracks = [scenes.track(c) for c in clips]
    coh = [metrics.coherence(c) for c in clips]
    acc = scenes.accuracy(zip((it.scene for it in items), tracks, strict=True))
    tracked = [c.track_smoothness for c in coh if c.object_tracked]
    return {
        **{k: 100.0 * v for k, v in acc.items()},
        "n": len(items),
        "flicker": float(np.mean([c.background_flicker for c in coh])),
        "ssim": float(np.mean([c.mean_ssim for c in coh])),
        "smoothness_median": float(np.median(tracked)) if tracked else float("nan"),
        "tracked": 100.0 * len(tracked) / len(coh),
    }


def row(label: str, s: dict) -> str:
    return (f"| {label} | {s['n']} | {s['direction']:.1f} | {s['colour']:.1f} | {s['background']:.1f} | "
            f"{s['shape']:.1f} | {s['all']:.1f} | {s['flicker']:.2f} | {s['ssim']:.3f} | "
            f"{s['smoothness_median']:.2f} |")


HEADER = ("| prompts | n | direction % | colour % | background % | shape % | all four % | bg flicker | "
          "SSIM | track smoothness px (median) |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="GENSTACK_VIDEO_MODEL value (default: models/video)")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--validation", action="store_true",
                    help="score the validation prompts instead (for choosing checkpoints and settings)")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--noise", choices=["shared", "independent", "both"], default="both")
    ap.add_argument("--share", type=float, default=None,
                    help="noise share with shared noise (default: the service's)")
    ap.add_argument("--compare-prompts", type=int, default=0,
                    help="with --noise both: prompts for the independent-noise run (0: all)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the figures to this file")
    ap.add_argument("--save-clips", default="", help="write the first clips of each run as GIFs into this folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    core = VideoCore(VideoSettings(model=args.model))
    share = core.settings.noise_share if args.share is None else args.share
    items = (scenes.validation_prompts if args.validation else scenes.eval_prompts)(args.prompts)
    # the (shorter) independent-noise run first, so that a long run has its side-by-side figures early
    runs = ["independent", "shared"] if args.noise == "both" else [args.noise]
    print(f"model {core.source()} · {len(items)} {'validation' if args.validation else 'held-out'} prompts · DDIM "
          f"{args.steps} steps · guidance {args.guidance:g} · {torch.get_num_threads()} thread(s)")
    results, all_clips = {}, {}
    for noise in runs:
        subset = items
        if noise == "independent" and args.noise == "both" and args.compare_prompts:
            subset = items[:args.compare_prompts]
        t0 = time.perf_counter()
        clips = generate(core, subset, args.steps, args.guidance, noise, share, args.batch)
        elapsed = time.perf_counter() - t0
        label = f"shared noise ({share:g})" if noise == "shared" else "independent noise"
        res = {"all": score(subset, clips), "seconds": elapsed}
        for key, want in (("plain", False), ("synonyms", True)):
            sel = [i for i, it in enumerate(subset) if it.synonym == want]
            res[key] = score([subset[i] for i in sel], [clips[i] for i in sel])
        templates = scenes.VALIDATION_TEMPLATES if args.validation else scenes.EVAL_TEMPLATES
        for k, tpl in enumerate(templates):
            sel = [i for i, it in enumerate(subset) if it.template == k]
            if sel:
                res[tpl] = score([subset[i] for i in sel], [clips[i] for i in sel])
        results[label] = res
        all_clips[label] = (subset, clips)
        print(f"\n{label}: {len(subset)} clips in {elapsed:.0f} s\n{HEADER}")
        print(row("all", res["all"]))
        print(row("  plain wording", res["plain"]))
        print(row("  unseen synonyms", res["synonyms"]))
        for tpl in templates:
            if tpl in res:
                print(row(f'  "{tpl}"', res[tpl]))
        if args.save_clips:
            from services.video.core import encode_gif

            out = Path(args.save_clips)
            out.mkdir(parents=True, exist_ok=True)
            for i, clip in enumerate(clips[:8]):
                (out / f"{noise}-{i:02d}.gif").write_bytes(encode_gif(clip, scenes.FPS))
    if len(results) == 2:
        (sb, cb), (sa, ca) = all_clips.values()  # independent, shared
        n = min(len(sa), len(sb))
        a, b = score(sa[:n], ca[:n]), score(sb[:n], cb[:n])
        results["side by side"] = {"shared": a, "independent": b}
        print(f"\nside by side, the same {n} prompts and seeds, with the coherence technique and without:\n{HEADER}")
        print(row(f"shared noise ({share:g})", a))
        print(row("independent noise", b))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
