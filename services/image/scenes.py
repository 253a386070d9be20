"""Procedural scenes for the default image model: one shape on a plain background.

A scene is (shape, colour, background): 3 shapes x 8 colours x 7 other background colours =
168 combinations. The same module renders training images, writes the prompts that describe
them, and checks a generated image against its prompt, so the trainer and the faithfulness
benchmark agree on what "right" means.

Prompts come in separate vocabularies. TRAIN_TEMPLATES (a grammar of sentence shapes) and the
canonical words are what the model sees in training. PROMPT_ALIASES maps synonyms ("scarlet",
"box") to canonical words before encoding; the pipeline applies it, so synonyms need no training.
EVAL_TEMPLATES and the words in EVAL_ONLY_WORDS never occur in a training prompt: the benchmark
uses them to measure paraphrases. VALIDATION_TEMPLATES, in neither set, are for choosing
checkpoints and settings without tuning to the benchmark.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass
from typing import NamedTuple

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

#: Hand-written sentence shapes (the first ten were the whole training set of the first run).
HAND_TEMPLATES = (
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
    "the {s} is {c} and the background is {b}",
    "background: {b}. shape: {c} {s}",
    "a {b} scene containing a {c} {s}",
    "there is a {c} {s} on the {b} background",
    "{b} background; the shape is a {c} {s}",
    "the colour of the background is {b}, the {s} is {c}",
)

# A small grammar for the rest. Ten fixed sentences taught the model to bind colours partly by
# word order (an unseen "the background is X and the shape is Y" came out swapped), so training
# draws from hundreds of compositions in which either the shape or the background comes first,
# as a noun phrase or as a clause; the model has to bind each colour to its word.
_SHAPE_NOUN = (
    "a {c} {s}", "one {c} {s}", "the {c} {s}", "a single {c} {s}", "a small {c} {s}", "a big {c} {s}",
    "{c} {s}", "a {s} that is {c}", "a {s} coloured {c}", "a {s} in {c}", "a {c} coloured {s}",
)
# Clauses that name the colour after the shape ("the circle is red") were the model's weak spot: it
# bound a trailing colour by position (measured per sentence shape: 66-79 % right against 100 % for
# "the shape is a red circle"), so there are several verbs for it and a family of their own.
_SHAPE_CLAUSE_COLOUR_AFTER = (
    "the {s} is {c}", "the {s} colour is {c}", "the {s} looks {c}", "the {s} is coloured {c}",
    "the {s} is painted {c}",
)
_SHAPE_CLAUSE = ("the shape is a {c} {s}", "it has a {c} {s}", *_SHAPE_CLAUSE_COLOUR_AFTER)
_BG_NOUN = (
    "a {b} background", "the {b} background", "a plain {b} background", "{b} background", "a {b} backdrop",
    "a {b} wall", "a {b} canvas", "plain {b}", "{b}",
)
_BG_CLAUSE = ("the background is {b}", "the backdrop is {b}", "the background colour is {b}", "everything else is {b}")


_NOUN_JOINS = ("{S} on {B}", "{S} over {B}", "{S} against {B}", "{S} in front of {B}")
_BG_FIRST_JOINS = ("{B} with {S}", "{B} behind {S}", "{B} containing {S}", "{B}, {S}")
# "and" joins both orders: when it only ever came before the background, the model learnt that the
# colour after "and" is the background's and swapped "the background is X and the shape is Y".
_CLAUSE_JOINS = ("{S} and {B}", "{S}; {B}", "{S}, {B}", "{B} and {S}", "{B}; {S}", "{B}, {S}", "{B}. {S}")
#: Longest prompt in word pieces, leaving room for [CLS] and [SEP] in the 16 prompt tokens.
MAX_PROMPT_PIECES = 14
_PIECE = re.compile(r"[A-Za-z]+|[^A-Za-z\s]")


def _families() -> tuple[tuple[str, ...], ...]:
    """(hand-written, noun phrases joined, a noun phrase and a clause, two clauses with the shape's
    first, two clauses with the background's first) sentence shapes."""
    nouns = []
    for s in _SHAPE_NOUN:
        for b in _BG_NOUN:
            nouns += [j.format(S=s, B=b) for j in _NOUN_JOINS]
            if b[0] != "{":  # "blue with a red circle" reads badly without an article
                nouns += [j.format(S=s, B=b) for j in _BG_FIRST_JOINS]
    noun_and_clause = ("{S}, {B}", "{S}; {B}", "{S} where {B}", "{B} with {S}", "{B}, {S}")
    mixed = [j.format(S=s, B=b) for s in _SHAPE_NOUN for b in _BG_CLAUSE for j in noun_and_clause]
    clauses = [
        j.format(S=s, B=b)
        for s in _SHAPE_CLAUSE
        for b in _BG_CLAUSE
        for j in _CLAUSE_JOINS
        # the evaluation's "<background clause> and the <shape> is <colour>" and its near twins stay out
        if not (j == "{B} and {S}" and s.startswith("the {s}"))
    ]
    shape_first = [c for c in clauses if c.index("{s}") < c.index("{b}")]
    background_first = [c for c in clauses if c.index("{b}") < c.index("{s}")]

    def fits(template: str) -> bool:  # with the longest words, room left for a prefix
        return len(_PIECE.findall(template.format(c="purple", s="triangle", b="orange"))) <= MAX_PROMPT_PIECES - 3

    families = (nouns, mixed, shape_first, background_first)
    return (HAND_TEMPLATES, *(tuple(filter(fits, dict.fromkeys(f))) for f in families))


# The evaluation's sentence shapes stay out: never "showing", "should", "on <background> there is",
# or "<background clause> and the <shape> is <colour>"; tests/unit/test_image_scenes.py checks it.
TEMPLATE_FAMILIES = _families()
#: Every sentence shape used in training (a prefix such as "a picture of " may precede one).
TRAIN_TEMPLATES = tuple(dict.fromkeys(t for family in TEMPLATE_FAMILIES for t in family))
FAMILY_WEIGHTS = (0.1, 0.15, 0.15, 0.25, 0.35)
_PREFIXES = ("a picture of ", "an image of ", "a drawing of ", "render ", "a photo of ", "an icon of ")


#: Sentence shapes never used in training (paraphrases for evaluation only).
EVAL_TEMPLATES = (
    "an image showing one {c} {s} against a {b} background",
    "on a {b} background there is a {c} {s}",
    "draw a {c} {s}; the background should be {b}",
    "the background is {b} and the {s} is {c}",
)
#: Sentence shapes for choosing between checkpoints and settings: unseen in training and not the
#: benchmark's, so a choice made on them does not tune the model to the benchmark.
VALIDATION_TEMPLATES = (
    "a {c} {s} sits on a {b} background",
    "the backdrop is {b} while the {s} is {c}",
    "picture: {b} background and a {c} {s}",
    "make the background {b} and the {s} {c}",
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


def sample_train_prompt(scene: Scene, rng: np.random.Generator, weights: tuple[float, ...] = FAMILY_WEIGHTS) -> str:
    """A training prompt for the scene: a family of TEMPLATE_FAMILIES by `weights`, then a sentence
    shape in it, sometimes a prefix."""
    family = TEMPLATE_FAMILIES[rng.choice(len(TEMPLATE_FAMILIES), p=weights)]
    text = family[rng.integers(len(family))].format(c=scene.colour, s=scene.shape, b=scene.background)
    if family is TEMPLATE_FAMILIES[1] and rng.random() < 0.3:
        prefixed = _PREFIXES[rng.integers(len(_PREFIXES))] + text
        if len(_PIECE.findall(prefixed)) <= MAX_PROMPT_PIECES:
            text = prefixed
    return text


class EvalPrompt(NamedTuple):
    prompt: str
    scene: Scene
    synonym: bool  # uses synonyms never seen in training
    template: int  # index into EVAL_TEMPLATES


def eval_prompts(n: int = 120, seed: int = 1234, templates: tuple[str, ...] = EVAL_TEMPLATES) -> list[EvalPrompt]:
    """Prompts about held-out scenes in unseen sentence shapes; every second one uses synonyms."""
    rng = random.Random(seed)
    _, held = split_scenes()
    out = []
    for i in range(n):
        scene = held[i % len(held)]
        template = (i // len(held) + i) % len(templates)
        words = {"c": scene.colour, "s": scene.shape, "b": scene.background}
        synonym = i % 2 == 1
        if synonym:
            for key in rng.sample(["c", "s", "b"], 2):
                words[key] = rng.choice(EVAL_SYNONYMS[words[key]])
        out.append(EvalPrompt(templates[template].format(**words), scene, synonym, template))
    return out


def validation_prompts(n: int = 120, seed: int = 4321) -> list[EvalPrompt]:
    """Like eval_prompts, in VALIDATION_TEMPLATES: what training-time checks and model choices use."""
    return eval_prompts(n, seed, VALIDATION_TEMPLATES)


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


def accuracy(pairs) -> dict[str, float]:
    """Share right of each attribute (and of all three) over (wanted, seen) scene pairs; an image
    the checker cannot read (seen is None) counts as wrong."""
    pairs = list(pairs)
    hits = {"colour": 0, "background": 0, "shape": 0, "all": 0}
    for want, got in pairs:
        if got is None:
            continue
        hits["colour"] += got.colour == want.colour
        hits["background"] += got.background == want.background
        hits["shape"] += got.shape == want.shape
        hits["all"] += got == want
    return {k: v / max(1, len(pairs)) for k, v in hits.items()}
