"""Procedural clips, the prompt grammar with its held-out parts, and the checker that tracks the object."""

from __future__ import annotations

import numpy as np
import pytest

from services.image import scenes as image_scenes
from services.video import scenes


def test_the_checker_reads_every_training_render_back():
    rng = np.random.default_rng(0)
    train, held = scenes.split_scenes()
    for scene in train[::3] + held[::3]:
        clip = scenes.render(scene, rng)
        assert clip.shape == (scenes.FRAMES, scenes.SIZE, scenes.SIZE, 3) and clip.dtype == np.uint8
        tr = scenes.track(clip)
        assert tr.scene == scene, (scene, tr)
        assert tr.found == 1.0 and tr.smoothness < 0.5


def test_motion_is_steady_and_stays_in_the_frame():
    rng = np.random.default_rng(1)
    for direction in scenes.DIRECTIONS:
        scene = scenes.Scene("circle", "red", "blue", direction)
        for _ in range(20):
            r, centres = scenes.trajectory(scene, rng)
            steps = np.diff(centres, axis=0)
            assert np.allclose(steps, steps[0])
            speed = np.abs(steps[0]).sum()
            assert scenes.SPEED[0] <= speed <= scenes.SPEED[1]
            assert np.all(centres - r >= 1 - 1e-9) and np.all(centres + r <= scenes.SIZE - 1 + 1e-9)
            dx, dy = scenes.STEP[direction]
            assert np.sign(steps[0][0]) == dx and np.sign(steps[0][1]) == dy


def test_held_out_split_keeps_every_word_in_training():
    train, held = scenes.split_scenes()
    assert len(train) + len(held) == 3 * 8 * 7 * 4 and 100 <= len(held) <= 180
    assert not set(train) & set(held)
    for attr in ("shape", "colour", "background", "direction"):
        assert {getattr(s, attr) for s in train} == {getattr(s, attr) for s in scenes.all_scenes()}


def test_training_prompts_never_use_benchmark_or_validation_wording():
    rng = np.random.default_rng(2)
    train, _ = scenes.split_scenes()
    prompts = {scenes.sample_train_prompt(train[i % len(train)], rng) for i in range(3000)}
    bench = {p.prompt for p in scenes.eval_prompts(200)}
    valid = {p.prompt for p in scenes.validation_prompts(200)}
    assert not prompts & bench and not prompts & valid and not bench & valid
    words = {w for p in prompts for w in p.replace(",", " ").replace(";", " ").replace(".", " ").split()}
    assert not words & scenes.EVAL_ONLY_WORDS
    for marker in ("sliding", "travels", "drifting", "glides", "drifts", "should", "animation", "clip:"):
        assert not any(marker in p for p in prompts), marker
    # every prompt names the direction and the shape's and background's colours
    for p in list(prompts)[:300]:
        assert any(d in p for d in scenes.DIRECTIONS)


def test_training_prompts_name_their_scene():
    rng = np.random.default_rng(3)
    train, _ = scenes.split_scenes()
    for scene in train[:200]:
        p = scenes.normalise_prompt(scenes.sample_train_prompt(scene, rng))
        assert scene.colour in p and scene.background in p and scene.shape in p and scene.direction in p, p


def test_benchmark_prompts_are_held_out_scenes_in_unseen_shapes():
    items = scenes.eval_prompts(120)
    _, held = scenes.split_scenes()
    assert len(items) == 120 and {it.scene for it in items} <= set(held)
    assert sum(it.synonym for it in items) == 60
    for it in items:
        normal = scenes.normalise_prompt(it.prompt)
        for word in (it.scene.colour, it.scene.background, it.scene.shape, it.scene.direction):
            assert word in normal, (it.prompt, normal)
    assert {it.scene.direction for it in items} == set(scenes.DIRECTIONS)


def test_aliases_extend_the_image_table():
    assert image_scenes.PROMPT_ALIASES.items() <= scenes.PROMPT_ALIASES.items()
    assert scenes.normalise_prompt("A Crimson disc heading Westward") == "a red circle heading left"


@pytest.mark.parametrize("direction", scenes.DIRECTIONS)
def test_track_reads_direction_and_flags_a_still_object(direction):
    rng = np.random.default_rng(4)
    scene = scenes.Scene("square", "yellow", "purple", direction)
    clip = scenes.render(scene, rng)
    assert scenes.track(clip).scene.direction == direction
    still = np.repeat(clip[:1], scenes.FRAMES, axis=0)
    assert scenes.track(still).scene.direction == "none"
    blank = np.zeros_like(clip)
    assert scenes.track(blank).scene is None


def test_smoothness_measures_jitter():
    centres = np.stack([np.arange(16.0), np.full(16, 10.0)], axis=1)
    assert scenes.smoothness(centres) == pytest.approx(0.0)
    jitter = centres.copy()
    jitter[::2, 1] += 1.0
    assert scenes.smoothness(jitter) == pytest.approx(1.0, abs=0.1)


def test_accuracy_counts_unreadable_clips_as_wrong():
    want = scenes.Scene("circle", "red", "blue", "left")
    acc = scenes.accuracy([(want, want), (want, scenes.Scene("circle", "red", "blue", "up")), (want, None)])
    assert acc["direction"] == pytest.approx(1 / 3) and acc["colour"] == pytest.approx(2 / 3)
    assert acc["all"] == pytest.approx(1 / 3)
