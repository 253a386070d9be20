"""Prompt faithfulness of the image model: does the picture show what the prompt says?

    python bench/image_quality.py [--prompts 120] [--steps 25] [--guidance 1.5] [--raw]

Held-out shape x colour x background combinations (never drawn in training), written in sentence
shapes never used in training, half of them with synonyms never used in training ("crimson",
"navy", "disc"). A procedural checker (services.image.scenes.check) reads shape kind, shape colour
and background colour back from each image. `--raw` also scores the synonym prompts with the
pipeline's synonym table switched off, to show what the model does with unseen words on its own.
Chance: colours 12.5 %, shape 33 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.image import scenes  # noqa: E402
from services.image.core import ImageCore  # noqa: E402
from services.image.settings import ImageSettings  # noqa: E402

ATTRS = ("colour", "background", "shape", "all")


def score(pipe, items, steps: int, guidance: float, scheduler: str, batch: int = 40) -> dict[str, float]:
    hits = dict.fromkeys(ATTRS, 0)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = pipe(
            [p for p, _, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(start + i) for i in range(len(chunk))],
            output_type="np",
        ).images
        for img, (_, want, _) in zip(images, chunk, strict=True):
            got = scenes.check((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
            if got is None:
                continue
            hits["colour"] += got.colour == want.colour
            hits["background"] += got.background == want.background
            hits["shape"] += got.shape == want.shape
            hits["all"] += got == want
    return {k: 100.0 * v / len(items) for k, v in hits.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="GENSTACK_IMAGE_MODEL value (default: models/image)")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.5])
    ap.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm-solver++", "euler"])
    ap.add_argument("--raw", action="store_true", help="also score synonym prompts without the synonym table")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    core = ImageCore(ImageSettings(model=args.model))
    pipe = core.pipeline()  # the service's own loading path
    pipe.scheduler = core._scheduler(pipe, args.scheduler)
    items = scenes.eval_prompts(args.prompts)
    plain = [it for it in items if not it[2]]
    synonyms = [it for it in items if it[2]]
    print(f"model {core.source()} · {len(items)} held-out prompts ({len(synonyms)} with unseen synonyms) · "
          f"{args.steps} steps {args.scheduler} · torch threads {torch.get_num_threads()}\n")
    print("| prompts | guidance | n | colour % | background % | shape % | all three % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    t0 = time.perf_counter()
    for g in args.guidance:
        rows = [("all held-out", items), ("  plain wording", plain), ("  unseen synonyms", synonyms)]
        for label, subset in rows:
            s = score(pipe, subset, args.steps, g, args.scheduler)
            print(f"| {label} | {g:g} | {len(subset)} | {s['colour']:.1f} | {s['background']:.1f} | "
                  f"{s['shape']:.1f} | {s['all']:.1f} |", flush=True)
        if args.raw:
            aliases = pipe.config.prompt_aliases
            pipe.register_to_config(prompt_aliases={})
            try:
                s = score(pipe, synonyms, args.steps, g, args.scheduler)
            finally:
                pipe.register_to_config(prompt_aliases=aliases)
            print(f"| unseen synonyms, no synonym table | {g:g} | {len(synonyms)} | {s['colour']:.1f} | "
                  f"{s['background']:.1f} | {s['shape']:.1f} | {s['all']:.1f} |", flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s; chance: colours 12.5 %, shape 33.3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
