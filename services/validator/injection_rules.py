"""The rule set for prompt-injection signs: phrases that address the model instead of the reader.

Two tiers. `STRONG` patterns are injection signs on their own (an instruction to ignore earlier
instructions, a fake system/assistant turn, a request to reveal the system prompt, a jailbreak
persona, a message addressed to AI readers, an exfiltration request). `CUES` are weaker words
that only show that a text talks to or about the model; the classifier's hits are confirmed by
them (see checks/injection.py), because on technical prose the classifier alone fires too often.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_I = re.IGNORECASE

_OBJECT = (r"(?:instructions?|prompts?|rules|guidelines|directions|directives|commands|context|messages?|constraints|"
           r"polic(?:y|ies)|guardrails|restrictions|programming|training|orders|everything|anything)")
_QUALIFIER = (r"(?:(?:all|any|the|your|my|these|those|its|of|previous|prior|above|earlier|preceding|foregoing|initial|"
              r"original|system|safety|existing|old|current|other|every|developer|given|default)\s+){0,4}")

STRONG: list[tuple[str, re.Pattern[str]]] = [
    ("ignore-instructions", re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|neglect|discard|set aside)\b[\s,]+"
        + _QUALIFIER + _OBJECT, _I)),
    ("ignore-above", re.compile(
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|what\s+(?:was|is)\s+)?"
        r"(?:the\s+)?(?:above|before|previously|said before|written above)\b", _I)),
    ("reveal-prompt", re.compile(
        r"\b(?:reveal|print|show|output|repeat|leak|display|disclose|dump|tell me|give me|share)\b.{0,40}?"
        r"\b(?:system\s+prompt|hidden\s+(?:instructions?|prompt)|initial\s+(?:instructions?|prompt)|"
        r"(?:your|the)\s+(?:original\s+|secret\s+)?(?:instructions|prompt)|developer\s+message)", _I)),
    ("persona-jailbreak", re.compile(
        r"\byou\s+are\s+(?:now\s+)?(?:DAN\b|an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|evil)\b)|"
        r"\b(?:developer|god|jailbreak|DAN|unrestricted)\s+mode\b|\bjailbr(?:ea|o)k", _I)),
    ("no-restrictions", re.compile(
        r"\b(?:act|pretend|behave|roleplay|role-play|respond)\b.{0,40}?\b(?:without|no|free of|ignoring)\s+"
        r"(?:any\s+)?(?:restrictions|filters|rules|limits|guidelines|safety|censorship)", _I)),
    ("fake-turn", re.compile(
        r"(?:^|[\n.!?]\s*)(?:system|assistant|developer)\s*:\s|\[/?(?:system|INST|SYS)\]|<\|?(?:im_start|system)\|?>|"
        r"<</?SYS>>|#{2,}\s*(?:system|instruction)s?\b|\[(?:system|admin)\s+(?:override|message|note)\]", _I)),
    ("addressed-to-ai", re.compile(
        r"\b(?:note|message|instructions?|attention|hint)s?\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?"
        r"(?:ai|a\.i\.|assistants?|language\s+models?|llms?|chatbots?|gpts?|models?|bots?|agents?)\b|"
        r"\bif\s+you\s+are\s+(?:an?\s+)?(?:ai|a\.i\.|assistant|language\s+model|llm|chatbot|bot|agent)\b|"
        r"\b(?:ai|assistants?|llms?|language\s+models?|chatbots?|bots|agents)\s+reading\s+this\b|"
        r"\b(?:attention|hey|hi|hello|dear)[,:]?\s+(?:the\s+)?(?:ai|a\.i\.|assistant|language\s+model|llm|chatbot|gpt|bot)\b",
        _I)),
    ("new-instructions", re.compile(
        r"\b(?:new|updated|real|actual|revised|additional|secret)\s+(?:instructions?|orders|directives|task)\s*"
        r"(?::|from\b|are\b|follow\b)|\bfrom\s+now\s+on,?\s+(?:you|always|only|respond|answer|reply|never)\b", _I)),
    ("exfiltration", re.compile(
        r"\b(?:send|post|forward|exfiltrate|leak|upload|email|e-mail)\b.{0,30}?\b(?:the\s+)?(?:user'?s?\s+|all\s+)?"
        r"(?:conversation|chat\s+history|api\s+keys?|credentials|passwords?|session\s+tokens?|secrets?|"
        r"personal\s+data)\b.{0,30}?\b(?:to|at)\b|!\[[^\]]*\]\(https?://[^)]*[?&][^)]*=", _I)),
    ("hide-from-user", re.compile(
        r"\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|mention\s+(?:this|it)\s+to|reveal\s+(?:this|it)\s+to|"
        r"let)\s+(?:the\s+)?user\b", _I)),
]

CUES = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b(?=.{0,40}?\b(?:instructions?|rules|prompts?|guidelines|above|"
    r"previous|prior|earlier|everything)\b)|"
    r"\b(?:previous|prior|above|earlier|new|real|actual|hidden|original|initial|secret|system)\s+"
    r"(?:instructions?|task|prompt|rules|orders)\b|"
    r"\byour\s+(?:instructions|task|rules|prompt|guidelines|programming|system|training|creators?|developers?)\b|"
    r"\b(?:assistants?|chatbots?|a\.i\.|ai|llms?|language\s+models?|gpt)\b|"
    r"\byou\s+(?:are|must|will|should)\s+now\b|\bfrom\s+now\s+on\b|"
    r"\b(?:reply|respond|answer|output)\s+(?:only|exclusively)\b|"
    r"\bdo\s+not\s+(?:tell|mention|reveal)\s+(?:this|it|the\s+user|anyone)\b|"
    r"\b(?:pretend|role-?play|act\s+as|jailbreak)|\bset\s+aside\b|"
    r"\b(?:told|said|given)\s+(?:to\s+you\s+)?(?:earlier|before|previously)\b|"
    r"\binstead[,]?\s+(?:reply|respond|write|say|answer|output|print|return)\b",
    _I,
)


@dataclass(frozen=True)
class RuleHit:
    rule: str
    start: int
    end: int
    text: str


def strong_hits(text: str) -> list[RuleHit]:
    """Every strong-rule match in `text`, in order of position."""
    hits = [RuleHit(name, m.start(), m.end(), m.group(0)) for name, rx in STRONG for m in rx.finditer(text)]
    return sorted(hits, key=lambda h: h.start)


def has_cue(text: str) -> bool:
    return CUES.search(text) is not None
