"""Stop-sequence handling in the engine: held-back text and the earliest stop."""

from services.generator.engine import Engine, _held_back


def test_held_back_keeps_a_possible_stop_prefix():
    assert _held_back("Hello wor", ["world!"]) == 3
    assert _held_back("Hello", ["###"]) == 0
    assert _held_back("abc#", ["##", "#x#"]) == 1
    assert _held_back("a\n\n", ["\n\nQ:"]) == 2


def test_find_stop_takes_the_earliest_and_ignores_sent_text():
    assert Engine._find_stop("one two three", ["three", "two"], 0) == 4
    assert Engine._find_stop("one two three", ["zzz"], 0) is None
    # a stop that lies entirely inside text already sent does not count again
    assert Engine._find_stop("stop here stop", ["stop"], 6) == 10


def test_settings_reject_bad_values_with_the_field():
    import pytest

    from services.generator.core import GenerationRequest, GeneratorCore
    from shared.errors import InvalidArgument

    core = GeneratorCore()
    with pytest.raises(InvalidArgument, match="messages\\[0\\].role"):
        core.check(GenerationRequest(messages=[("robot", "hi")]))
    with pytest.raises(InvalidArgument, match="sampling.stop"):
        core.check(GenerationRequest(prompt="x", stop=["ok", ""]))
    with pytest.raises(InvalidArgument, match="output.top_logprobs"):
        core.check(GenerationRequest(prompt="x", top_logprobs=21))
    with pytest.raises(InvalidArgument, match="give either prompt or messages"):
        core.check(GenerationRequest(prompt="x", messages=[("user", "y")]))
    filled = core.check(GenerationRequest(prompt="x"))
    assert filled.temperature == core.settings.default_temperature
    assert filled.max_new_tokens == core.settings.default_max_new_tokens
