"""Procedural scenes for the default image model: one shape on a plain background.

A scene is (shape, colour, background): 3 shapes x 8 colours x 7 other background colours =
168 combinations. The same module renders training images, writes the prompts that describe
them, and checks a generated image against its prompt, so the trainer and the faithfulness
benchmark agree on what "right" means.

Prompts come in three vocabularies. TRAIN_TEMPLATES and the canonical words are what the model
sees in training. PROMPT_ALIASES maps synonyms ("scarlet", "box") to canonical words before
encoding; the pipeline applies it, so synonyms need no training. EVAL_TEMPLATES and the words in
EVAL_ONLY_WORDS never occur in a training prompt: the benchmark uses them to measure paraphrases.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle")
#: RGB of each colour. Chosen far apart so that a nearest-colour check is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)

#: Synonym -> canonical word, applied by the pipeline before the text encoder sees the prompt.
PROMPT_ALIASES: dict[str, str] = {
    # colours
    "crimson": "red", "scarlet": "red", "ruby": "red", "cherry": "red", "vermilion": "red",
    "tangerine": "orange", "amber": "orange", "apricot": "orange",
    "golden": "yellow", "gold": "yellow", "lemon": "yellow", "canary": "yellow",
    "emerald": "green", "lime": "green", "olive": "green", "jade": "green", "forest": "green",
    "navy": "blue", "azure": "blue", "cobalt": "blue", "sapphire": "blue", "indigo": "blue",
    "violet": "purple", "lilac": "purple", "lavender": "purple", "magenta": "purple", "plum": "purple",
    "snow": "white", "ivory": "white", "pearl": "white",
    "ebony": "black", "jet": "black", "coal": "black", "onyx": "black", "charcoal": "black",
    # shapes
    "disc": "circle", "disk": "circle", "dot": "circle", "ring": "circle", "round": "circle",
    "box": "square", "block": "square", "tile": "square", "rectangle": "square",
    "wedge": "triangle", "pyramid": "triangle",
}

TRAIN_TEMPLATES = (
    "a {c} {s} on a {b} background",
    "{c} {s}, {b} background",
    "a {b} background with a {c} {s}",
    "a {s} that is {c} on {b}",
    "{c} {s} on {b}",
    "a picture of a {c} {s} over a {b} background",
    "one {c} {s} in front of a {b} wall",
    "a simple {c} {s} centered on plain {b}",
    "{b} backdrop, {c} {s}",
    "an icon: {c} {s}, {b} background",
    # Added at step ~3660 of the shipped run, after the first 10 alone left the model binding
    # colours by word order ("the background is X and ... is Y" swapped them): sentences where
    # the background's colour comes first or is stated with "is".
    "the {s} is {c} and the background is {b}",
    "background: {b}. shape: {c} {s}",
    "a {b} scene containing a {c} {s}",
    "there is a {c} {s} on the {b} background",
    "{b} background; the shape is a {c} {s}",
    "the colour of the background is {b}, the {s} is {c}",
)
#: Sentence shapes never used in training (paraphrases for evaluation only).
EVAL_TEMPLATES = (
    "an image showing one {c} {s} against a {b} background",
    "on a {b} background there is a {c} {s}",
    "draw a {c} {s}; the background should be {b}",
    "the background is {b} and the {s} is {c}",
)
#: Synonyms the benchmark substitutes into prompts; none occurs in a training prompt.
EVAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "orange": ("tangerine",),
    "yellow": ("golden", "lemon"),
    "green": ("emerald",),
    "blue": ("navy", "azure"),
    "purple": ("violet",),
    "white": ("ivory",),
    "black": ("ebony",),
    "circle": ("disc",),
    "square": ("box",),
    "triangle": ("wedge",),
}
EVAL_ONLY_WORDS = frozenset(w for ws in EVAL_SYNONYMS.values() for w in ws)

_WORD = re.compile(r"[A-Za-z]+")


def normalise_prompt(prompt: str, aliases: dict[str, str] | None = None) -> str:
    """Lower-case the prompt and replace known synonyms by their canonical word."""
    table = PROMPT_ALIASES if aliases is None else aliases
    return _WORD.sub(lambda m: table.get(m.group(0).lower(), m.group(0).lower()), prompt)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str


def all_scenes() -> list[Scene]:
    return [
        Scene(s, c, b) for s, c, b in itertools.product(SHAPES, COLOURS, COLOURS) if c != b
    ]


def _held_out(scene: Scene) -> bool:
    # A fixed ~20% of combinations, chosen by hash so the split never changes between runs.
    digest = hashlib.sha256(f"{scene.shape}|{scene.colour}|{scene.background}".encode()).digest()
    return digest[0] < 52


def split_scenes() -> tuple[list[Scene], list[Scene]]:
    """(train, held_out) combinations; every shape and colour still appears in training."""
    train = [s for s in all_scenes() if not _held_out(s)]
    held = [s for s in all_scenes() if _held_out(s)]
    return train, held


def train_prompt(scene: Scene, template: int) -> str:
    return TRAIN_TEMPLATES[template].format(c=scene.colour, s=scene.shape, b=scene.background)


def eval_prompts(n: int = 120, seed: int = 1234) -> list[tuple[str, Scene, bool]]:
    """(prompt, scene, uses_synonym) for held-out scenes in unseen sentence shapes; half use synonyms."""
    rng = random.Random(seed)
    _, held = split_scenes()
    out = []
    for i in range(n):
        scene = held[i % len(held)]
        template = EVAL_TEMPLATES[(i // len(held) + i) % len(EVAL_TEMPLATES)]
        words = {"c": scene.colour, "s": scene.shape, "b": scene.background}
        synonym = i % 2 == 1
        if synonym:
            for key in rng.sample(["c", "s", "b"], 2):
                words[key] = rng.choice(EVAL_SYNONYMS[words[key]])
        out.append((template.format(**words), scene, synonym))
    return out


def render(scene: Scene, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """HxWx3 uint8 image: the shape at a random place and size on its background."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.array(PALETTE[scene.background], dtype=np.float32) + rng.normal(0, 4, 3)
    r = rng.uniform(0.19, 0.31) * size  # half the shape's extent
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if scene.shape == "circle":
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif scene.shape == "square":
        mask = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    else:  # apex up, base 2r wide, height 2r
        t = (y - (cy - r)) / (2 * r)
        mask = (t >= 0) & (t <= 1) & (np.abs(x - cx) <= r * t)
    img[mask] = np.array(PALETTE[scene.colour], dtype=np.float32) + rng.normal(0, 4, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]


def check(image: np.ndarray) -> Scene | None:
    """Read (shape, colour, background) back from an HxWx3 uint8 image; None when no shape is found.

    Background: the median of the one-pixel border. Shape: the pixels far from the background;
    its colour is their median, its kind the share of its bounding box it fills (square ~1.0,
    circle ~0.79, triangle ~0.5).
    """
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((img - bg) ** 2).sum(axis=2))
    mask = dist > 60
    if mask.sum() < 12:
        return None
    colour = _nearest_colour(np.median(img[mask], axis=0))
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    return Scene(shape, colour, _nearest_colour(bg))
