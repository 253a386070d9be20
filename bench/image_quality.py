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


def judge(pipe, items, steps: int, guidance: float, batch: int = 40) -> list[scenes.Scene | None]:
    """What the checker reads from each prompt's image (seed = the prompt's index)."""
    seen: list[scenes.Scene | None] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = pipe(
            [item.prompt for item in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(start + i) for i in range(len(chunk))],
            output_type="np",
        ).images
        seen += [scenes.check((np.clip(img, 0, 1) * 255).round().astype(np.uint8)) for img in images]
    return seen


def row(label: str, guidance: float, pairs) -> str:
    pairs = list(pairs)
    s = {k: 100.0 * v for k, v in scenes.accuracy(pairs).items()}
    return (f"| {label} | {guidance:g} | {len(pairs)} | {s['colour']:.1f} | {s['background']:.1f} | "
            f"{s['shape']:.1f} | {s['all']:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="GENSTACK_IMAGE_MODEL value (default: models/image)")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--validation", action="store_true",
                    help="score the validation prompts (for choosing checkpoints or settings) instead")
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
    templates = scenes.VALIDATION_TEMPLATES if args.validation else scenes.EVAL_TEMPLATES
    items = scenes.validation_prompts(args.prompts) if args.validation else scenes.eval_prompts(args.prompts)
    n_syn = sum(item.synonym for item in items)
    print(f"model {core.source()} · {len(items)} held-out prompts ({n_syn} with unseen synonyms) · "
          f"{args.steps} steps {args.scheduler} · torch threads {torch.get_num_threads()}\n")
    print("| prompts | guidance | n | colour % | background % | shape % | all three % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    t0 = time.perf_counter()
    for g in args.guidance:
        seen = judge(pipe, items, args.steps, g)
        pairs = [(item, item.scene, got) for item, got in zip(items, seen, strict=True)]
        print(row("all held-out", g, ((w, s) for _, w, s in pairs)))
        print(row("  plain wording", g, ((w, s) for i, w, s in pairs if not i.synonym)))
        print(row("  unseen synonyms", g, ((w, s) for i, w, s in pairs if i.synonym)))
        for t, template in enumerate(templates):
            print(row(f"  \"{template}\"", g, ((w, s) for i, w, s in pairs if i.template == t)))
        if args.raw:
            synonyms = [item for item in items if item.synonym]
            aliases = pipe.config.prompt_aliases
            pipe.register_to_config(prompt_aliases={})
            try:
                raw = judge(pipe, synonyms, args.steps, g)
            finally:
                pipe.register_to_config(prompt_aliases=aliases)
            raw_pairs = ((i.scene, s) for i, s in zip(synonyms, raw, strict=True))
            print(row("unseen synonyms, no synonym table", g, raw_pairs))
    print(f"\n({time.perf_counter() - t0:.0f} s; chance: colours 12.5 %, shape 33.3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
