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
from collections.abc import Iterator
from fractions import Fraction

from services.agent.calculator import CalculatorError, evaluate, ungroup

# commas only as thousands separators: "1,150" is one number, "1864, 1931" two
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?(?![\w])")
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


def _shown_sums(answer: str) -> Iterator[tuple[str, str, Fraction]]:
    """(expression, the result written, the calculator's value) for each sum the answer shows."""
    for m in _SHOWN.finditer(answer):
        expression, result = m.group(1).strip(), ungroup(m.group(2))
        if not any(op in expression for op in "+-*/x×÷") or not re.search(r"\d\s*\D+\s*\d", expression):
            continue
        try:
            yield expression, result, evaluate(expression)
        except CalculatorError:
            continue


def _confirmed(answer: str) -> set[str]:
    """Results of expressions shown in the answer that the calculator agrees with."""
    return {result for _, result, value in _shown_sums(answer) if _same(result, value)}


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
        # ... unless the next word is capitalised too: "William Quillon founded it."
        first = first and not re.match(r"\s+[A-Z]", answer[m.end():])
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


# -- does the answer cover every subject the goal asks about? --------------------------------------

#: a run of capitalised words: a name in the goal ("Lake Mirren", "the Pell Museum's")
_NAME = re.compile(r"[A-Z][\w-]*(?:'s)?(?:\s+[A-Z][\w-]*(?:'s)?)*")
# words that open a question or an instruction, capitalised only because they start the sentence
_OPENERS = _STOP | set("""give use search find tell show list name compare validate generate make double add
subtract multiply divide calculate work please""".split())


def subjects(goal: str) -> list[str]:
    """The names a goal asks about, in order ("How deep is Lake Mirren and how high is Mount Hallow?"
    -> ["Lake Mirren", "Mount Hallow"]); opening words of a sentence are not names."""
    out: list[str] = []
    for m in _NAME.finditer(goal):
        words = [w.removesuffix("'s") for w in m.group(0).split()]
        at_start = not goal[: m.start()].strip() or goal[: m.start()].rstrip()[-1] in ".!?:"
        while words and (words[0].lower() in _STOP or (at_start and words[0].lower() in _OPENERS)):
            words, at_start = words[1:], False
        name = " ".join(words)
        if name and name.lower() not in (s.lower() for s in out):
            out.append(name)
    return out


def _facts(text: str, exclude: set[str]) -> set[str]:
    """What a passage could answer with: its numbers and capitalised words, less the goal's own."""
    words = {w.lower() for w in _WORD.findall(text) if w[0].isupper() and w.lower() not in _STOP}
    return {n for n in _numbers(text) + _spelled(text) if n not in exclude} | (words - exclude)


def _passages(observations: list[str]) -> list[str]:
    """The numbered passages of the results ("[1] ...", "[2] ..."), or their paragraphs."""
    return [p.strip() for o in observations for p in re.split(r"\n(?=\[\d+\])|\n{2,}", o) if p.strip()]


def coverage(answer: str, goal: str, observations: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Which of the goal's subjects an answer gives a fact about (a number or name from a result
    passage that mentions the subject), and which it leaves out, each with a passage about it.
    Subjects no result mentions are in neither list (nothing could be said about them)."""
    names = subjects(goal)
    passages = _passages(observations)
    exclude = {w.lower() for w in _WORD.findall(goal)} | set(_numbers(goal))
    given = set(_numbers(answer) + _spelled(answer)) | {w.lower() for w in _WORD.findall(answer)}
    covered: list[str] = []
    missing: list[tuple[str, str]] = []
    for name in names:
        about = [p for p in passages if name.lower() in p.lower()]
        if not about:
            continue
        if any(_facts(p, exclude) & given for p in about):
            covered.append(name)
        else:
            missing.append((name, about[0]))
    return covered, missing


def uncovered(answer: str, goal: str, observations: list[str]) -> list[tuple[str, str]]:
    """The goal's subjects that an answer leaves out, each with a result passage about it, when the
    answer gives a fact about at least one other subject: "58 metres" to "How deep is Lake Mirren
    and how high is Mount Hallow?" covers the lake and not the mountain. Empty when the goal names
    fewer than two subjects found in the results, when the answer says nothing was found, or when it
    gives no fact of any subject (a computed total, a yes or no): those are not partial answers."""
    if len(subjects(goal)) < 2 or is_refusal(answer):
        return []
    covered, missing = coverage(answer, goal, observations)
    return missing if covered else []


def unseen(goal: str, observations: list[str]) -> list[str]:
    """The goal's subjects that no result mentions yet: what a next search should be about."""
    seen = "\n".join(observations).lower()
    return [name for name in subjects(goal) if name.lower() not in seen]


def is_refusal(answer: str) -> bool:
    """Whether an answer says the results do not hold what was asked."""
    return bool(_REFUSAL.search(answer))


def miscalculated(answer: str) -> list[tuple[str, str]]:
    """(expression, the calculator's result) for each sum the answer shows with another result
    ("2022 - 1962 = 56" -> [("2022 - 1962", "60")])."""
    out = []
    for expression, result, value in _shown_sums(answer):
        if not _same(result, value):
            out.append((expression, str(value.numerator) if value.denominator == 1 else f"{float(value):.6g}"))
    return out


#: whole numbers an expression may use without a source: "double", per cent, days, weeks, units
COMMON_CONSTANTS = {Fraction(n) for n in (1, 2, 7, 10, 12, 24, 52, 60, 100, 365, 1000)}


def unsourced_numbers(expression: str, goal: str, observations: list[str]) -> list[str]:
    """The whole numbers of a calculator expression that neither the goal nor a result holds (nor a
    common constant): Qwen2.5-0.5B wrote "450*(2+3)" for "double 450" and "10*(2+3)" before it had
    searched at all. Decimals pass: they are mostly conversion factors a model knows (1.609, 2.54)."""
    seen = goal + "\n" + "\n".join(observations)
    known = {v for n in _numbers(seen) + _spelled(seen) if (v := _value(n)) is not None} | COMMON_CONSTANTS
    out = []
    for number in _numbers(expression.replace("-", " ")):  # "2022-1962": a minus, not a negative number
        value = _value(number)
        if value is not None and value.denominator == 1 and "." not in number and value not in known \
                and number not in out:
            out.append(number)
    return out


# words that make a goal ask for arithmetic on what is found, not for a number as written
_ARITHMETIC = re.compile(
    r"\b(plus|minus|times|multipl\w*|divided|divide|double|twice|triple|half|halve|subtract\w*|add(?:ed)?|sum|total|"
    r"difference|average|per|how many years (?:passed|after|before|between|ago|later|old)|how old|in total|together|"
    r"combined|altogether)\b", re.I)


def _stated(goal: str, observations: list[str]) -> set[Fraction]:
    """The values of the numbers the goal and the results write in digits."""
    return {v for n in _numbers(goal + "\n" + "\n".join(observations)) if (v := _value(n)) is not None}


def copied_not_computed(answer: str, goal: str, observations: list[str]) -> str:
    """When the goal asks for arithmetic and every number in the answer is one the goal or a result
    holds as written (none computed, no sum shown): the arithmetic word of the goal; else "".
    "How many years passed between the bridge opening and 2020?" -> "1931" is a found number."""
    cue = _ARITHMETIC.search(goal)
    numbers = _numbers(answer)
    if not cue or not numbers or _REFUSAL.search(answer) or _SHOWN.search(answer):
        return ""
    found = _stated(goal, observations)
    return cue.group(0) if all(_value(n) in found for n in numbers) else ""


# -- does the answer's fact answer what the goal asks about? ---------------------------------------

#: words that say which kind of value is asked for, not what it is about ("in which year was it built")
_KINDS = set("year years month day date time number name".split())
#: measurements a goal may ask for with one word and a result state with another ("how high" / "rises to
#: 2,870 metres"); a result naming a different one ("412 metres long" for "how wide") is about something else
_DIMENSIONS = [set("long length".split()), set("tall height high".split()), set("deep depth".split()),
               set("wide width broad breadth".split()), set("far distance".split())]
_LENGTH_UNIT = re.compile(r"^[\s-]*(?:metres?|meters?|m|kilometres?|kilometers?|km|feet|foot|ft|miles?|yards?|"
                          r"centimetres?|cm|millimetres?|mm)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[])")


def _root(word: str) -> str:
    word = word.lower()
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _related(a: str, b: str) -> bool:
    """One word's root starts the other's ("employs" / "employees", "opened" / "open")."""
    a, b = _root(a), _root(b)
    return min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)) or a == b


def aspects(goal: str, observations: list[str]) -> list[str]:
    """What a one-subject goal asks about the subject, as its content words: "What is the ticket price
    of the Velna Festival?" -> ["ticket", "price"]. A word next to the name that the results also write
    next to it is part of the name ("the Saffa ferry", "the river Selm"); words for the kind of value
    (year, number) are left out."""
    names = subjects(goal)
    if len(names) != 1:
        return []
    words = _WORD.findall(goal)
    name = names[0].lower()
    name_words = set(name.split())
    at = [i for i, w in enumerate(words) if w.lower() in name_words]
    seen = " ".join(" ".join(observations).lower().split())
    near = {i for i in ((min(at) - 1, max(at) + 1) if at else ()) if 0 <= i < len(words)
            and (f"{words[i].lower()} {name}" in seen or f"{name} {words[i].lower()}" in seen)}
    return [w.lower() for i, w in enumerate(words)
            if i not in near and i not in at and w.lower() not in _STOP and w.lower() not in _OPENERS
            and w.lower() not in _KINDS and len(w) > 2]


def _about(sentence: str, number: str, asked: list[str]) -> bool:
    """Whether a result sentence holding `number` (or a name, with number "") speaks of what is asked."""
    words = _WORD.findall(sentence)
    if any(_related(a, w) for a in asked for w in words):
        return True
    wanted = [d for d in _DIMENSIONS if d & set(asked)]
    if not wanted or not number:
        return False
    named = [d for d in _DIMENSIONS if d & {w.lower() for w in words}]
    if any(d not in wanted for d in named):
        return False  # "412 metres long" does not say how wide
    for m in _NUMBER.finditer(sentence):
        if ungroup(m.group(0)) == number and _LENGTH_UNIT.match(sentence[m.end():]):
            return True
    return False


def off_topic(answer: str, goal: str, observations: list[str]) -> tuple[str, str] | None:
    """(the fact, the result sentence it came from) when a one-subject answer gives facts found in
    the results and none of them comes from a sentence about what the goal asks: "What is the
    population of Harrowgate?" -> "340" from "It employs 340 engineers." None when the answer is
    fine, says nothing was found, computes something, or the goal names no aspect to check."""
    asked = aspects(goal, observations)
    if not asked or is_refusal(answer) or _ARITHMETIC.search(goal):
        return None
    subject = subjects(goal)[0].lower()
    goal_facts = set(_numbers(goal)) | {w.lower() for w in _WORD.findall(goal)}
    facts = [n for n in _numbers(answer) if n not in goal_facts]
    facts += [w for w in _WORD.findall(answer) if w[0].isupper() and w.lower() not in goal_facts
              and w.lower() not in _STOP]
    first: tuple[str, str] | None = None
    for passage in _passages(observations):
        on_subject = subject in passage.lower()
        for sentence in _SENTENCE_END.split(re.sub(r"^\[\d+\]\s*", "", passage)):
            numbers = set(_numbers(sentence))
            for fact in facts:
                is_number = fact[0].isdigit() or fact[0] == "-"
                if (fact in numbers) if is_number else re.search(rf"\b{re.escape(fact)}\b", sentence):
                    if on_subject and _about(sentence, fact if is_number else "", asked):
                        return None
                    first = first or (fact, sentence.strip())  # about something else, or about another subject
    return first


def unasked_sum(answer: str, goal: str, observations: list[str]) -> str:
    """A sum the answer shows whose result no result states, for a goal that asks for no arithmetic:
    "How many pear trees grow in Brisk Orchard?" -> "1150 + 320 = 1470". The expression, or ""."""
    if _ARITHMETIC.search(goal) or is_refusal(answer):
        return ""
    found = _stated(goal, observations)
    for expression, result, _ in _shown_sums(answer):
        if _value(result) not in found:
            return f"{expression} = {result}"
    return ""


def arithmetic_asked(goal: str) -> int:
    """How many arithmetic words the goal uses ("Multiply it by 2." -> 1): the calculations it may need."""
    return len(_ARITHMETIC.findall(goal))


def has_numbers(goal: str, observations: list[str]) -> bool:
    """Whether the goal or a result holds a number, in digits or words, for a calculation to use."""
    text = goal + "\n" + "\n".join(observations)
    return bool(_numbers(text) or _spelled(text))
