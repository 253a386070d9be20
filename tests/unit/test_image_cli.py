"""`genstack image "prompt" -o out.png`: writes the PNG(s) and shows a progress bar."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.cli import main


def run(capsys, *argv):
    code = main(["image", *argv, "--transport", "inproc"])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_the_png_with_a_progress_bar(capsys, tmp_path):
    target = tmp_path / "out.png"
    code, _, err = run(capsys, "a red square on a white background", "-o", str(target), "--steps", "5", "--seed", "3")
    assert code == 0
    img = Image.open(target)
    assert img.format == "PNG" and img.size == (32, 32)
    assert "denoising" in err and "5/5" in err  # the tqdm bar reached the last step
    assert "seed 3" in err and "5 steps ddim" in err
    # the same seed from the CLI gives the same pixels again
    again = tmp_path / "again.png"
    run(capsys, "a red square on a white background", "-o", str(again), "--steps", "5", "--seed", "3")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(img))


def test_several_images_and_options(capsys, tmp_path):
    code, _, err = run(capsys, "a blue circle on a black background", "-o", str(tmp_path / "pic.png"), "-n", "2",
                       "--steps", "3", "--seed", "10", "--scheduler", "euler", "--width", "40", "--height", "32",
                       "--no-progress")
    assert code == 0
    for name in ("pic-1.png", "pic-2.png"):
        assert Image.open(io.BytesIO((tmp_path / name).read_bytes())).size == (40, 32)
    assert "3 steps euler" in err and "denoising" not in err


def test_bad_input_exits_with_the_field_named(capsys, tmp_path):
    code, _, err = run(capsys, "a red circle", "-o", str(tmp_path / "x.png"), "--width", "33")
    assert code == 2
    assert "INVALID_ARGUMENT" in err and "width" in err
    assert not (tmp_path / "x.png").exists()
