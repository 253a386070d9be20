"""Procedural clips for the default video model: one shape, one colour, a plain background, steady motion.

A clip scene is (shape, colour, background, direction): the image scenes of services.image.scenes
(3 shapes x 8 colours x 7 other backgrounds) times 4 directions = 672 combinations. A clip is 16
frames of 32x32 at 8 fps in which the shape crosses part of the frame at a constant speed. The
same module renders training clips, writes the prompts that describe them, and tracks the object
through a generated clip to check it against its prompt, so the trainer and the benchmark agree.

Prompts: an image sentence from the image grammar (services.image.scenes.TEMPLATE_FAMILIES) with a
motion phrase woven in ("a red circle moving right on a blue background", "... ; it moves left").
MOTION_ALIASES extends the image synonym table with direction words ("leftwards" -> left).
The benchmark's sentence shapes (EVAL_TEMPLATES), its motion phrases and synonyms never occur in
training; VALIDATION_TEMPLATES are for choosing checkpoints and settings.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from services.image import scenes as image_scenes
from services.image.scenes import COLOURS, PALETTE, SHAPES

SIZE = 32
FRAMES = 16
FPS = 8
DIRECTIONS = ("left", "right", "up", "down")
#: Unit step of each direction in (x, y) image coordinates (y grows downwards).
STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEED = (0.6, 0.9)  # pixels per frame at 32x32
HALF_EXTENT = (5.5, 8.0)  # half the shape's side / radius, pixels at 32x32

#: Synonyms the pipeline maps before encoding: the image table plus direction words.
MOTION_ALIASES: dict[str, str] = {
    "leftward": "left", "leftwards": "left", "westward": "left",
    "rightward": "right", "rightwards": "right", "eastward": "right",
    "upward": "up", "upwards": "up", "skyward": "up", "northward": "up",
    "downward": "down", "downwards": "down", "southward": "down",
}
PROMPT_ALIASES: dict[str, str] = {**image_scenes.PROMPT_ALIASES, **MOTION_ALIASES}

# Motion phrases inside a sentence: after the shape noun ("a red circle moving right") or as a
# clause of its own ("...; it moves right"). {d} is the direction word, {dd} the phrase for it.
_DIRECTION_PHRASE = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "upward"),
    "down": ("down", "downwards", "downward"),
}
_AFTER_SHAPE = ("{s} moving {dd}", "{s} going {dd}", "{s} that moves {dd}", "{s} heading {dd}")
_CLAUSES = (
    "{X}, moving {dd}", "{X}; it moves {dd}", "{X}, it goes {dd}", "{X} and it moves {dd}",
    "{X}; the {s} moves {dd}", "{X}, the {s} is moving {dd}", "{X}. motion: {dd}",
    "moving {dd}: {X}", "{X}, heading {dd}",
)
#: Longest prompt in word pieces the training grammar writes (the pipeline reads 24 tokens).
MAX_PROMPT_PIECES = 22
MAX_PROMPT_TOKENS = 24
_PIECE = re.compile(r"[A-Za-z]+|[^A-Za-z\s]")

#: Sentence shapes (with motion) never used in training: the benchmark's.
EVAL_TEMPLATES = (
    "an animation of a {c} {s} sliding {d} across a {b} background",
    "on a {b} background a {c} {s} travels {d}",
    "a {c} {s} drifting {d}; the background should be {b}",
    "the background is {b} and the {s} is {c}, going {d}",
)
#: For choosing checkpoints and settings; neither training's nor the benchmark's.
VALIDATION_TEMPLATES = (
    "a {c} {s} glides {d} over a {b} background",
    "the backdrop is {b} while the {s} is {c} and heads {d}",
    "clip: {b} background, a {c} {s} drifts {d}",
    "make the background {b} and move the {c} {s} {d}",
)
#: Words the benchmark substitutes (none occurs in a training prompt); image synonyms + directions.
EVAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    **image_scenes.EVAL_SYNONYMS,
    "left": ("westward",),
    "right": ("eastward",),
    "up": ("skyward", "northward"),
    "down": ("southward",),
}
EVAL_ONLY_WORDS = frozenset(w for ws in EVAL_SYNONYMS.values() for w in ws)
_WORD = re.compile(r"[A-Za-z]+")


def normalise_prompt(prompt: str) -> str:
    return _WORD.sub(lambda m: PROMPT_ALIASES.get(m.group(0).lower(), m.group(0).lower()), prompt)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    direction: str

    @property
    def image(self) -> image_scenes.Scene:
        return image_scenes.Scene(self.shape, self.colour, self.background)


def all_scenes() -> list[Scene]:
    return [Scene(s, c, b, d) for s, c, b, d in itertools.product(SHAPES, COLOURS, COLOURS, DIRECTIONS) if c != b]


def _held_out(scene: Scene) -> bool:
    digest = hashlib.sha256(f"{scene.shape}|{scene.colour}|{scene.background}|{scene.direction}".encode()).digest()
    return digest[0] < 52  # a fixed ~20 %, by hash, so the split never changes


def split_scenes() -> tuple[list[Scene], list[Scene]]:
    """(train, held_out) combinations; every shape, colour and direction still appears in training."""
    train = [s for s in all_scenes() if not _held_out(s)]
    held = [s for s in all_scenes() if _held_out(s)]
    return train, held


def sample_train_prompt(scene: Scene, rng: np.random.Generator) -> str:
    """An image sentence from the image grammar with a motion phrase woven in."""
    for _ in range(20):
        family = image_scenes.TEMPLATE_FAMILIES[rng.choice(len(image_scenes.TEMPLATE_FAMILIES),
                                                           p=image_scenes.FAMILY_WEIGHTS)]
        template = family[rng.integers(len(family))]
        dd = _DIRECTION_PHRASE[scene.direction][rng.integers(3)]
        if rng.random() < 0.4 and "{c} {s}" in template:
            after = _AFTER_SHAPE[rng.integers(len(_AFTER_SHAPE))]
            text = template.replace("{c} {s}", "{c} " + after, 1)
            text = text.format(c=scene.colour, s=scene.shape, b=scene.background, dd=dd)
        else:
            x = template.format(c=scene.colour, s=scene.shape, b=scene.background)
            clause = _CLAUSES[rng.integers(len(_CLAUSES))]
            text = clause.format(X=x, s=scene.shape, dd=dd)
        if len(_PIECE.findall(text)) <= MAX_PROMPT_PIECES:
            return text
    return f"a {scene.colour} {scene.shape} moving {scene.direction} on a {scene.background} background"


class EvalPrompt(NamedTuple):
    prompt: str
    scene: Scene
    synonym: bool  # uses synonyms never seen in training
    template: int  # index into the template tuple


def eval_prompts(n: int = 120, seed: int = 1234, templates: tuple[str, ...] = EVAL_TEMPLATES) -> list[EvalPrompt]:
    """Prompts about held-out scenes in unseen sentence shapes; every second one uses synonyms."""
    rng = random.Random(seed)
    _, held = split_scenes()
    order = list(held)
    random.Random(seed + 1).shuffle(order)
    out = []
    for i in range(n):
        scene = order[i % len(order)]
        template = (i // len(order) + i) % len(templates)
        words = {"c": scene.colour, "s": scene.shape, "b": scene.background, "d": scene.direction}
        synonym = i % 2 == 1
        if synonym:
            for key in rng.sample(["c", "s", "b", "d"], 2):
                words[key] = rng.choice(EVAL_SYNONYMS[words[key]])
        out.append(EvalPrompt(templates[template].format(**words), scene, synonym, template))
    return out


def validation_prompts(n: int = 120, seed: int = 4321) -> list[EvalPrompt]:
    return eval_prompts(n, seed, VALIDATION_TEMPLATES)


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    t = (y - (cy - r)) / (2 * r)  # apex up, base 2r wide, height 2r
    return (t >= 0) & (t <= 1) & (np.abs(x - cx) <= r * t)


def trajectory(scene: Scene, rng: np.random.Generator, frames: int = FRAMES, size: int = SIZE):
    """(r, centres [F, 2] as (x, y)) of a steady motion that keeps the shape inside the frame."""
    scale = size / SIZE
    r = rng.uniform(*HALF_EXTENT) * scale
    speed = rng.uniform(*SPEED) * scale
    travel = speed * (frames - 1)
    dx, dy = STEP[scene.direction]
    lo, hi = r + 1, size - r - 1
    start = []
    for d in (dx, dy):
        if d > 0:
            start.append(rng.uniform(lo, max(lo, hi - travel)))
        elif d < 0:
            start.append(rng.uniform(min(hi, lo + travel), hi))
        else:
            start.append(rng.uniform(lo, hi))
    t = np.arange(frames, dtype=np.float64)[:, None]
    centres = np.array(start)[None] + t * speed * np.array([dx, dy])[None]
    return r, centres


def render(scene: Scene, rng: np.random.Generator, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """F x H x W x 3 uint8 clip: the shape moving steadily on its background (fixed colour jitter)."""
    r, centres = trajectory(scene, rng, frames, size)
    bg = np.array(PALETTE[scene.background], dtype=np.float32) + rng.normal(0, 4, 3)
    fg = np.array(PALETTE[scene.colour], dtype=np.float32) + rng.normal(0, 4, 3)
    clip = np.empty((frames, size, size, 3), dtype=np.float32)
    for i, (cx, cy) in enumerate(centres):
        clip[i] = bg
        clip[i][_mask(scene.shape, cx, cy, r, size)] = fg
    return np.clip(clip, 0, 255).astype(np.uint8)


# -- checking a generated clip ----------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """What the checker reads from a clip."""

    scene: Scene | None  # None when the object is lost in too many frames
    centres: np.ndarray  # [F, 2] (x, y); NaN where no object was found
    found: float  # share of frames with an object
    displacement: tuple[float, float]  # fitted (dx, dy) over the clip, pixels
    smoothness: float  # RMS deviation of frame-to-frame steps from their mean, pixels (lower is steadier)


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb) ** 2).sum(axis=1)))]


def background_colour(clip: np.ndarray) -> np.ndarray:
    """Median RGB of the one-pixel border over all frames."""
    img = clip.astype(np.float32)
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1).reshape(-1, 3)
    return np.median(border, axis=0)


def object_masks(clip: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """[F, H, W] bool: pixels far from the clip's background colour."""
    bg = background_colour(clip)
    dist = np.sqrt(((clip.astype(np.float32) - bg) ** 2).sum(axis=-1))
    return dist > threshold


def track(clip: np.ndarray, min_pixels: int = 8) -> Track:
    """Track the object through an F x H x W x 3 uint8 clip and read the scene back.

    Background: the median of the border over all frames. Object: per frame, the pixels far from it;
    its colour is their median over the clip, its kind the median share of its bounding box it
    fills (square ~1.0, circle ~0.79, triangle ~0.5), its direction the larger component of a
    straight-line fit to its centroids (under a pixel of travel reads as no motion: wrong).
    """
    frames, height, width = clip.shape[:3]
    masks = object_masks(clip)
    centres = np.full((frames, 2), np.nan)
    fills, pixels = [], []
    for i, m in enumerate(masks):
        if m.sum() < min_pixels or m.mean() > 0.5:  # nothing, or no plain background to stand out from
            continue
        ys, xs = np.nonzero(m)
        centres[i] = (xs.mean() + 0.5, ys.mean() + 0.5)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills.append(m.sum() / box)
        pixels.append(clip[i][m])
    ok = ~np.isnan(centres[:, 0])
    found = float(ok.mean())
    smooth = smoothness(centres)
    if ok.sum() < max(3, frames // 2):
        return Track(None, centres, found, (0.0, 0.0), smooth)
    t = np.arange(frames)[ok]
    slope = [np.polyfit(t, centres[ok, k], 1)[0] for k in range(2)]
    disp = (float(slope[0] * (frames - 1)), float(slope[1] * (frames - 1)))
    if max(abs(disp[0]), abs(disp[1])) < 1.0:
        direction = "none"
    elif abs(disp[0]) >= abs(disp[1]):
        direction = "right" if disp[0] > 0 else "left"
    else:
        direction = "down" if disp[1] > 0 else "up"
    fill = float(np.median(fills))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    colour = _nearest_colour(np.median(np.concatenate(pixels).astype(np.float32), axis=0))
    bg = _nearest_colour(background_colour(clip))
    return Track(Scene(shape, colour, bg, direction), centres, found, disp, smooth)


def smoothness(centres: np.ndarray) -> float:
    """RMS deviation of the frame-to-frame centroid steps from their mean step (pixels); NaN when fewer
    than three consecutive frames have an object. 0 is a perfectly steady motion."""
    steps = np.diff(centres, axis=0)
    steps = steps[~np.isnan(steps).any(axis=1)]
    if len(steps) < 2:
        return float("nan")
    return float(np.sqrt(((steps - steps.mean(axis=0)) ** 2).sum(axis=1).mean()))


def accuracy(pairs) -> dict[str, float]:
    """Share right of each attribute (and of all four) over (wanted, Track) pairs; a clip the
    checker cannot read counts as wrong."""
    pairs = list(pairs)
    hits = {"direction": 0, "colour": 0, "background": 0, "shape": 0, "all": 0}
    for want, got in pairs:
        seen = got.scene if isinstance(got, Track) else got
        if seen is None:
            continue
        hits["direction"] += seen.direction == want.direction
        hits["colour"] += seen.colour == want.colour
        hits["background"] += seen.background == want.background
        hits["shape"] += seen.shape == want.shape
        hits["all"] += seen == want
    return {k: v / max(1, len(pairs)) for k, v in hits.items()}
