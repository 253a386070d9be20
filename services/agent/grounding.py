"""Is a final answer supported by what the run observed? A small model that found nothing useful
still answers, with a colour, a name or a price it made up ("What colour is the ferry?" -> "red").
The loop checks the answer's names and numbers against the goal and the tool results before it
returns it; what neither contains is unsupported.

Deliberately lexical and narrow, so that a right answer is not refused: a number counts when the
goal or a result holds it (to the precision written) or when the answer shows an expression that
the calculator confirms ("1150 + 320 = 1470"); a capitalised name counts when a result or the goal
holds the word; lowercase words matter only when the answer has nothing else ("red").
"""

from __future__ import annotations

import re
from fractions import Fraction

from services.agent.calculator import CalculatorError, evaluate, ungroup

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
# an expression the answer shows with its result: "1150 + 320 = 1470", "412 - 236 is 176"
_SHOWN = re.compile(r"([\d.,\s()+\-*/x×÷]*\d[\d.,\s()+\-*/x×÷]*)\s*(?:=|is|equals)\s*(-?\d[\d,]*(?:\.\d+)?)")
# an answer that says the results do not hold it is never "unsupported"
_REFUSAL = re.compile(
    r"\b(not (?:in|found|contain\w*|available|mention\w*|provided|listed|specified|known|stated)|no (?:information|"
    r"mention|data|record|result|answer)|(?:does|do|did)(?: not|n't) (?:say|mention|contain|provide|include|state|"
    r"give|list)|(?:don't|do not) know|unknown|cannot (?:find|answer|determine)|can't (?:find|answer)|"
    r"could(?: not|n't) find|unable to)\b", re.I)
_STOP = set("""a an the and or but of in on at to for from by with about into over under after before than
then it its it's is are was were be been being this that these those there here they them their he she his
her we our you your i my me yes no not none do does did done has have had can could would should will may
might must per each every all any some one ones also only just so as if when which who whom whose what where
why how much many more most less least very answer result results tool tools task sum total difference
product quotient approximately about around roughly exactly""".split())


_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen twenty").split()
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORDS = {**{w: i for i, w in enumerate(_WORDS)}, **_TENS, "dozen": 12, "hundred": 100, "thousand": 1000,
                 "million": 1_000_000, "twice": 2, "double": 2, "half": 2, "once": 1}


def _spelled(text: str) -> list[str]:
    """Numbers written as words in a result ("two moons") as digits."""
    return [str(_NUMBER_WORDS[w]) for w in re.findall(r"[a-z]+", text.lower()) if w in _NUMBER_WORDS]


def _numbers(text: str) -> list[str]:
    return [ungroup(m.group(0)) for m in _NUMBER.finditer(text)]


def _value(number: str) -> Fraction | None:
    try:
        return Fraction(number.rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


def _same(written: str, known: Fraction) -> bool:
    """`written` equals `known`, to the decimals it was written with (3.85 matches 3.846...)."""
    value = _value(written)
    if value is None:
        return False
    decimals = len(written.partition(".")[2])
    return abs(value - known) <= Fraction(1, 2 * 10**decimals)


def _confirmed(answer: str) -> set[str]:
    """Results of expressions shown in the answer that the calculator agrees with."""
    out = set()
    for m in _SHOWN.finditer(answer):
        expression, result = m.group(1).strip(), ungroup(m.group(2))
        if not any(op in expression for op in "+-*/x×÷") or not re.search(r"\d\s*\D+\s*\d", expression):
            continue
        try:
            value = evaluate(expression)
        except CalculatorError:
            continue
        if _same(result, value):
            out.add(result)
    return out


def _stem(word: str) -> str:
    return word.lower()[:5]


def unsupported(answer: str, goal: str, observations: list[str]) -> list[str]:
    """The names and numbers of `answer` that neither `goal` nor any observation contains (empty:
    the answer is supported, or says that nothing was found)."""
    if _REFUSAL.search(answer):
        return []
    seen = goal + "\n" + "\n".join(observations)
    known = [v for n in _numbers(seen) + _spelled(seen) if (v := _value(n)) is not None]
    confirmed = _confirmed(answer)
    missing: list[str] = []
    grounded = 0
    for number in _numbers(answer):
        if number in confirmed or any(_same(number, k) for k in known):
            grounded += 1
        elif number not in missing:
            missing.append(number)
    seen_words = {_stem(w) for w in _WORD.findall(seen)}
    lowercase: list[str] = []
    for m in _WORD.finditer(answer):
        w = m.group(0)
        if w.lower() in _STOP or len(w) < 2:
            continue
        first = not answer[: m.start()].strip() or answer[: m.start()].rstrip()[-1] in ".!?:"
        if _stem(w) in seen_words:
            grounded += 1
        elif w[0].isupper() and not first:  # a name; a sentence's first word may just be capitalised
            if w not in missing:
                missing.append(w)
        elif w not in lowercase:
            lowercase.append(w)
    if not grounded and not missing:
        missing = lowercase  # nothing in the answer comes from the run: "red"
    return missing
