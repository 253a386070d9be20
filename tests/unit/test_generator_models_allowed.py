"""Models are the operator's choice: clients pick registered models unless the operator allows
more, and a refused or missing model says nothing about the host's folders."""

from __future__ import annotations

import pytest

from services.generator import registry
from services.generator.core import GeneratorCore
from services.generator.settings import GeneratorSettings
from shared.errors import InvalidArgument


def test_by_default_only_registered_models(tmp_path):
    assert GeneratorSettings().allow_any_model is False
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    messages = set()
    for name in (str(model_dir), str(tmp_path / "missing"), "org/some-model", "nosuch"):
        with pytest.raises(InvalidArgument) as e:
            registry.resolve(name, tmp_path, allow_any=False)
        assert "smollm2-135m" in e.value.message and "GENSTACK_GENERATOR_ALLOW_ANY_MODEL" in e.value.message
        messages.add(e.value.message.replace(f" {name!r}", ""))
    assert len(messages) == 1, "a folder that exists and one that does not must read alike"


def test_when_allowed_existing_and_missing_folders_fail_alike(tmp_path):
    core = GeneratorCore(GeneratorSettings(allow_any_model=True))
    empty = tmp_path / "empty"
    empty.mkdir()
    answers = set()
    for name in (str(empty), str(tmp_path / "missing"), "org/not-in-the-cache"):
        with pytest.raises(InvalidArgument) as e:
            core._load(name)
        assert str(tmp_path) not in e.value.message.replace(name, "NAME"), e.value.message
        answers.add(e.value.message.replace(repr(name), "NAME"))
    assert len(answers) == 1, answers
