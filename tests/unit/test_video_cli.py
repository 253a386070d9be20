"""`genstack video "prompt" -o out.mp4`: writes the clip in the asked format and shows a progress bar."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
from PIL import Image

from shared.cli import main

PROMPT = "a red circle moving right on a blue background"


def run(capsys, *argv):
    code = main(["video", *argv, "--transport", "inproc"])
    out, err = capsys.readouterr()
    return code, out, err


def _mp4_frames(path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_writes_an_mp4_with_a_progress_bar_and_its_coherence(capsys, tmp_path):
    target = tmp_path / "out.mp4"
    code, _, err = run(capsys, PROMPT, "-o", str(target), "--steps", "2", "--frames", "4", "--seed", "1")
    assert code == 0, err
    assert target.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    frames = _mp4_frames(target)
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
    assert "denoising" in err and "2/2" in err  # the bar reached the last step
    assert "4 frames 32x32" in err and "seed 1" in err and "coherence: background flicker" in err


def test_png_frames_and_gif_on_request(capsys, tmp_path):
    code, _, err = run(capsys, PROMPT, "-o", str(tmp_path / "clip.png"), "--steps", "2", "--frames", "3",
                       "--seed", "2", "--no-progress")
    assert code == 0, err
    pngs = sorted(tmp_path.glob("clip-*.png"))
    assert [p.name for p in pngs] == ["clip-000.png", "clip-001.png", "clip-002.png"]
    assert Image.open(pngs[0]).size == (32, 32) and "denoising" not in err
    code, _, err = run(capsys, PROMPT, "-o", str(tmp_path / "clip.gif"), "--steps", "2", "--frames", "3",
                       "--seed", "2", "--no-progress")
    assert code == 0, err
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.format == "GIF" and gif.n_frames == 3


def test_bad_input_exits_with_the_field_named(capsys, tmp_path):
    code, _, err = run(capsys, PROMPT, "-o", str(tmp_path / "x.mp4"), "--frames", "1")
    assert code == 2
    assert "INVALID_ARGUMENT" in err and "num_frames" in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()
