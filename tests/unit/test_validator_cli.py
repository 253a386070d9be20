"""`genstack validate`: a policy on a file or on text, the verdict printed, the exit status telling the result."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from shared.cli import main


def run(capsys, *argv):
    code = main(["validate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_against_a_schema_fails_with_feedback(capsys, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}))
    code, out, _ = run(capsys, "--policy", "json-output", "--schema", str(schema), "--text", '{"age": "old"}')
    assert code == 1
    assert out.startswith("FAIL  policy json-output")
    assert "schema_error in /age: 'old' is not of type 'integer'" in out
    assert "feedback:\n- Return JSON that satisfies the schema" in out
    code, out, _ = run(capsys, "--policy", "json-output", "--schema", str(schema), "--text", '{"age": 3}')
    assert code == 0 and out.startswith("PASS  policy json-output")


def test_inline_checks_and_json_output(capsys):
    code, out, _ = run(capsys, "--check", 'length={"max_chars": 5}', "--check", "pii", "--json",
                       "--text", "mail me: ada@example.org")
    doc = json.loads(out)
    assert code == 1 and doc["passed"] is False and doc["policy"] == "inline"
    assert [(r["name"], r["passed"]) for r in doc["results"]] == [("length", False), ("pii", False)]


def test_a_rag_answer_with_sources_from_files_and_text(capsys, tmp_path):
    src = tmp_path / "chunk1.txt"
    src.write_text("The Eiffel Tower is 330 metres tall and stands in Paris.")
    code, out, _ = run(capsys, "--policy", "rag-answer", "--request", "How tall is it?", "--source", str(src),
                       "--source", "It was completed in 1889.", "--text",
                       "The Eiffel Tower is 330 metres tall [1]. It was completed in 1889 [2].")
    assert code == 0, out
    assert "PASS            groundedness" in out and "detector: nanoguard" in out


def test_an_image_file_is_recognised_by_its_bytes(capsys, tmp_path):
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[8:24, 8:24] = (200, 50, 50)
    path = tmp_path / "picture.bin"  # no telling suffix: the PNG signature decides
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    code, out, _ = run(capsys, str(path), "--policy", "image-default", "--width", "48", "--height", "32")
    assert code == 0 and "decoded PNG 48x32 RGB" in out
    code, out, _ = run(capsys, str(path), "--policy", "image-default", "--width", "64", "--height", "64")
    assert code == 1 and "Generate the image at 64x64 pixels (got 48x32)." in out


def test_text_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2, 3]"))
    code, out, _ = run(capsys, "-", "--policy", "json-output")
    assert code == 0 and out.startswith("PASS")


def test_list_shows_policies_checks_and_the_detector(capsys):
    code, out, _ = run(capsys, "--list")
    assert code == 0
    assert out.startswith("prompt-injection detector: nanoguard")
    for name in ("rag-answer", "json-output", "image-default", "video-default", "video_coherence", "groundedness"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["--policy", "nope", "--text", "x"], "error (INVALID_ARGUMENT): policy: unknown policy 'nope'"),
    (["--check", "json_schema={\"schema\": {\"type\": 5}}", "--text", "{}"], "invalid JSON Schema"),
])
def test_bad_input_exits_2_with_the_reason(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err
