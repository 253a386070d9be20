"""The README documents every setting the code reads."""

from shared.config import env_vars
from shared.docs import README


def test_readme_lists_every_setting():
    text = README.read_text()
    missing = [var for var, _default, _doc in env_vars() if f"`{var}`" not in text]
    assert not missing, f"run `python -m shared.docs`; README lacks {missing}"
