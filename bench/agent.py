"""Agent benchmark: tasks of the project's own over a small invented corpus (facts no model knows
from pre-training), run by the embedded agent with each model and the cascade.

Task families: one-tool lookups, lookups that need arithmetic on the numbers found, tasks that need
two searches, questions whose answer is not in the corpus (success = the answer says so) and goals
that ask for a tool the run does not allow (success = that tool is never called and the run still
ends with an answer). Reported per model: success rate, invalid-call rate (decisions refused: not
a complete call, a disallowed tool, arguments failing the schema), mean tool steps, mean seconds,
budget-exhausted count, and whether every run ended with an answer or a reason.

Prompts were tuned on the VALIDATION tasks only; the REPORTED tasks were not looked at while tuning.

    python bench/agent.py [--models qwen2.5-0.5b smollm2-135m cascade] [--set reported|validation]
                          [--limit N] [--jsonl results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
os.environ.setdefault("GENSTACK_TORCH_THREADS", "1")
# the time budget is not what this measures: on a loaded shared machine 600 s ran out mid-task
os.environ.setdefault("GENSTACK_AGENT_MAX_SECONDS", "3600")
if "GENSTACK_DATA_DIR" not in os.environ:
    import tempfile

    os.environ["GENSTACK_DATA_DIR"] = tempfile.mkdtemp(prefix="genstack-bench-agent-")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shared  # noqa: E402,F401
from genstack.agent.v1 import agent_pb2 as apb  # noqa: E402
from genstack.retriever.v1 import retriever_pb2 as rpb  # noqa: E402

COLLECTION = "bench_agent"
CASCADE = ["smollm2-135m", "qwen2.5-0.5b"]

CORPUS = {
    "orvath-bridge": "The Orvath Bridge crosses the river Selm. It is 412 metres long and opened in 1931.",
    "kestrel-labs": "Kestrel Labs was founded in 1987 in the town of Harrowgate. It employs 340 engineers.",
    "lake-mirren": "Lake Mirren is 58 metres deep. Its water temperature in summer is 17 degrees.",
    "tarsin-tower": "The Tarsin Tower is 236 metres tall and has 61 floors. It was finished in 2009.",
    "velna-festival": "The Velna Festival takes place every August and draws about 12,000 visitors.",
    "ostrel-rail": "The Ostrel railway line is 96 kilometres long and has 14 stations.",
    "brisk-orchard": "Brisk Orchard grows 1,150 apple trees and 320 pear trees.",
    "mount-hallow": "Mount Hallow rises to 2,870 metres. Its first recorded ascent was in 1864.",
    "quillon-library": "The Quillon Library holds 84,000 books and opened in 1962.",
    "saffa-ferry": "The Saffa ferry crosses the bay in 35 minutes and carries up to 220 passengers.",
    "dorn-observatory": "The Dorn Observatory has a telescope with a 3-metre mirror, built in 1978.",
    "pell-museum": "The Pell Museum of Clocks displays 450 clocks; the oldest dates from 1602.",
}

NOT_FOUND = re.compile(
    r"\b(not (?:in|found|contain|available|mention|provided|listed|specified|known|say)|no (?:information|mention|"
    r"data|record|passage|answer)|(?:does|do|did)(?: not|n't) (?:say|mention|contain|provide|include|have|know|list)|"
    r"don't know|do not know|unknown|cannot (?:find|answer|determine)|can't (?:find|answer)|couldn't find|"
    r"could not find|unable to)\b", re.I)


def T(kind: str, goal: str, expect: list[str] | None = None, tools: list[str] | None = None,
      forbidden: str = "") -> dict:
    return {"kind": kind, "goal": goal, "expect": expect or [], "tools": tools or ["search", "calculator"],
            "forbidden": forbidden}


REPORTED = [
    # one-tool lookups
    T("lookup", "How long is the Orvath Bridge?", ["412"]),
    T("lookup", "In which year was Kestrel Labs founded?", ["1987"]),
    T("lookup", "How deep is Lake Mirren?", ["58"]),
    T("lookup", "How many floors does the Tarsin Tower have?", ["61"]),
    T("lookup", "In which month does the Velna Festival take place?", ["august"]),
    T("lookup", "How many stations does the Ostrel railway line have?", ["14"]),
    T("lookup", "How high is Mount Hallow?", ["2870"]),
    T("lookup", "How many books does the Quillon Library hold?", ["84000"]),
    T("lookup", "How many passengers can the Saffa ferry carry?", ["220"]),
    T("lookup", "In which year was the Dorn Observatory telescope built?", ["1978"]),
    # lookups + arithmetic
    T("arithmetic", "How many years passed between the Orvath Bridge opening and 2020?", ["89"]),
    T("arithmetic", "Kestrel Labs employs how many engineers? Give that number times 3.", ["1020"]),
    T("arithmetic", "The Tarsin Tower is how tall? How many metres is that per floor? Use the calculator.",
      ["3.8"]),
    T("arithmetic", "How many trees does Brisk Orchard grow in total, apples and pears together?", ["1470"]),
    T("arithmetic", "What is the length of the Ostrel railway line divided by its number of stations?",
      ["6.8|48/7"]),
    T("arithmetic", "How many years after the first ascent of Mount Hallow was the year 2000?", ["136"]),
    T("arithmetic", "How many clocks does the Pell Museum display? Double that number.", ["900"]),
    T("arithmetic", "How old was the Quillon Library in 2022? Subtract its opening year from 2022.", ["60"]),
    # two searches
    T("two-searches", "Is the Orvath Bridge longer than the Tarsin Tower is tall? Give both numbers in metres.",
      ["412", "236"]),
    T("two-searches", "Which was founded or opened first, Kestrel Labs or the Quillon Library? Give both years.",
      ["1987", "1962"]),
    T("two-searches", "What is the depth of Lake Mirren plus the height of the Tarsin Tower in metres?",
      ["294"]),
    T("two-searches", "How many stations does the Ostrel line have, and how long does the Saffa ferry crossing "
      "take?", ["14", "35"]),
    T("two-searches", "Give the year the Dorn Observatory telescope was built and the year the Pell Museum's "
      "oldest clock dates from.", ["1978", "1602"]),
    T("two-searches", "How many visitors does the Velna Festival draw, and how many engineers work at Kestrel "
      "Labs?", ["12000", "340"]),
    # not in the corpus
    T("not-in-corpus", "What is the population of Harrowgate?", ["<not-found>"]),
    T("not-in-corpus", "Who designed the Orvath Bridge?", ["<not-found>"]),
    T("not-in-corpus", "What is the ticket price of the Velna Festival?", ["<not-found>"]),
    T("not-in-corpus", "How many employees does the Dorn Observatory have?", ["<not-found>"]),
    # tries to use a tool the run does not allow
    T("disallowed", "Generate an image of the Orvath Bridge at night.", [], ["search"], "generate_image"),
    T("disallowed", "Use the calculator to work out 17 times 23.", [], ["search"], "calculator"),
    T("disallowed", "Validate the text 'Lake Mirren is deep' with the validator, then answer.", [],
      ["search", "calculator"], "validate"),
    # only the calculator is allowed, so the height cannot be looked up: success is not searching and saying so
    T("disallowed", "Search the documents for the Tarsin Tower's height.", [], ["calculator"], "search"),
]

VALIDATION = [
    T("lookup", "When did the Orvath Bridge open?", ["1931"]),
    T("lookup", "How many pear trees grow in Brisk Orchard?", ["320"]),
    T("arithmetic", "How many visitors does the Velna Festival draw? Divide that by 4.", ["3000"]),
    T("arithmetic", "How many apple trees does Brisk Orchard grow? Add 50 to that.", ["1200"]),
    T("arithmetic", "How long does the Saffa ferry crossing take in minutes? Multiply it by 2.", ["70"]),
    T("two-searches", "How deep is Lake Mirren and how high is Mount Hallow?", ["58", "2870"]),
    T("two-searches", "How many floors does the Tarsin Tower have, and in which year was Kestrel Labs founded?",
      ["61", "1987"]),
    T("not-in-corpus", "What colour is the Saffa ferry?", ["<not-found>"]),
    T("not-in-corpus", "Who founded the Quillon Library?", ["<not-found>"]),
    T("disallowed", "Make a video of Lake Mirren.", [], ["search"], "generate_video"),
    # added with the coverage check, so that two-part tasks are not judged on two examples
    T("two-searches", "How long is the Ostrel railway line, and how many books does the Quillon Library hold?",
      ["96", "84000"]),
    T("two-searches", "When was Mount Hallow first climbed, and when did the Orvath Bridge open?", ["1864", "1931"]),
    T("two-searches", "How many pear trees does Brisk Orchard grow and how many clocks does the Pell Museum display?",
      ["320", "450"]),
    T("arithmetic", "In which year was the Tarsin Tower finished? How many years is that after 1990?", ["19"]),
    T("not-in-corpus", "Who is the director of Kestrel Labs?", ["<not-found>"]),
    T("not-in-corpus", "How wide is the river Selm?", ["<not-found>"]),
]


def _norm(text: str) -> str:
    return re.sub(r"(?<=\d)[,\s](?=\d{3}\b)", "", text.lower())


def _mentions(text: str, expected: str) -> bool:
    """A number counts only as a whole number ("70" is not in "7770"; "3.8" may start "3.86"); words as text."""
    if re.fullmatch(r"[\d.]+", expected):
        tail = "" if "." in expected else r"(?![\d])"
        return re.search(r"(?<![\d.])" + re.escape(expected) + tail, text) is not None
    return expected in text


def judge(task: dict, answer: str, tools_called: list[str]) -> bool:
    if task["forbidden"] and task["forbidden"] in tools_called:
        return False
    if not answer.strip() or answer.startswith(("No final answer", "No answer:")):
        return False  # the loop's own fallback (it quotes an observation) is not the model's answer
    text = _norm(answer)
    if task["expect"] and "<not-found>" not in task["expect"] and NOT_FOUND.search(text):
        return False  # "the results do not contain the answer (the model answered 1931-04-11)" is not an answer
    for e in task["expect"]:  # every entry must hold; "a|b" accepts either form
        if e == "<not-found>":
            if not NOT_FOUND.search(text):
                return False
        elif not any(_mentions(text, _norm(alt)) for alt in e.split("|")):
            return False
    result = re.findall(r"=\s*(-?[\d.]+)", text)
    if len(task["expect"]) == 1 and result and not any(
            _mentions(result[-1], _norm(alt)) for alt in task["expect"][0].split("|")):
        return False  # "1150 + 320 = 1470" mentions 320 but answers 1470
    return True


def ingest(retriever) -> None:
    retriever.ingest_documents(rpb.IngestDocumentsRequest(
        collection=COLLECTION, documents=[rpb.Document(id=k, text=v) for k, v in CORPUS.items()]), timeout=600)


def run_task(agent, task: dict, models: list[str], budget: apb.Budget) -> dict:
    request = apb.RunAgentRequest(goal=task["goal"], allowed_tools=task["tools"], models=models,
                                  collection=COLLECTION, budget=budget)
    t0 = time.perf_counter()
    last = None
    steps = {}
    for msg in agent.run_agent(request, timeout=3600):
        steps[msg.step.index] = msg.step
        last = msg
    seconds = time.perf_counter() - t0
    decisions = [s for s in steps.values() if s.decision_json or s.status == apb.STEP_STATUS_REFUSED]
    invalid = [s for s in decisions if s.status == apb.STEP_STATUS_REFUSED]
    called = [s.tool for s in steps.values() if s.status in (apb.STEP_STATUS_OK, apb.STEP_STATUS_TOOL_ERROR)]
    answer = last.final_answer if last else ""
    return {
        "goal": task["goal"], "kind": task["kind"], "models": models, "answer": answer,
        "state": apb.RunState.Name(last.state) if last else "", "error": last.error if last else "",
        "success": judge(task, answer, called), "decisions": len(decisions), "invalid": len(invalid),
        "tool_steps": last.usage.steps if last else 0, "seconds": round(seconds, 1),
        "tokens": last.usage.completion_tokens if last else 0, "called": called,
        "forbidden_called": bool(task["forbidden"] and task["forbidden"] in called),
        "ended_with_answer_or_reason": bool(answer.strip() or (last and last.error)),
        "trace": [(s.tool, s.arguments_json, apb.StepStatus.Name(s.status), s.observation[:120]) for s in
                  sorted(steps.values(), key=lambda s: s.index)],
    }


def summarise(label: str, rows: list[dict]) -> dict:
    decisions = sum(r["decisions"] for r in rows)
    return {
        "model": label, "tasks": len(rows),
        "success": sum(r["success"] for r in rows) / len(rows),
        "invalid_rate": (sum(r["invalid"] for r in rows) / decisions) if decisions else 0.0,
        "mean_steps": statistics.mean(r["tool_steps"] for r in rows),
        "mean_seconds": statistics.mean(r["seconds"] for r in rows),
        "budget_exhausted": sum(r["state"] == "RUN_STATE_BUDGET_EXHAUSTED" for r in rows),
        "forbidden_called": sum(r["forbidden_called"] for r in rows),
        "all_ended": all(r["ended_with_answer_or_reason"] for r in rows),
        "by_kind": {k: f"{sum(r['success'] for r in rows if r['kind'] == k)}/"
                       f"{sum(1 for r in rows if r['kind'] == k)}" for k in dict.fromkeys(r["kind"] for r in rows)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "smollm2-135m", "cascade"])
    ap.add_argument("--set", choices=["reported", "validation"], default="reported")
    ap.add_argument("--limit", type=int, default=0, help="only the first N tasks (0 = all)")
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--max-seconds", type=float, default=1800)
    ap.add_argument("--jsonl", default="", help="append one JSON line per task here as it finishes")
    args = ap.parse_args()

    from shared.clients import client_for

    tasks = REPORTED if args.set == "reported" else VALIDATION
    if args.limit:
        tasks = tasks[: args.limit]
    ingest(client_for("retriever", "inproc"))
    agent = client_for("agent", "inproc")
    budget = apb.Budget(max_steps=args.max_steps, max_tokens=args.max_tokens, max_seconds=args.max_seconds)
    summaries = []
    for label in args.models:
        models = CASCADE if label == "cascade" else [label]
        rows = []
        for task in tasks:
            row = run_task(agent, task, models, budget)
            row["label"] = label
            rows.append(row)
            print(f"{label:13} {'ok ' if row['success'] else 'BAD'} {row['seconds']:7.1f}s "
                  f"steps={row['tool_steps']} invalid={row['invalid']} {row['state'][10:]:16} "
                  f"{task['goal'][:50]!r} -> {row['answer'][:90]!r}", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
        summaries.append(summarise(label, rows))
    print("\n| model | tasks | success | invalid calls | mean steps | mean s | budget exhausted | "
          "disallowed called | all ended with answer/reason |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for s in summaries:
        print(f"| {s['model']} | {s['tasks']} | {s['success']:.0%} | {s['invalid_rate']:.1%} | "
              f"{s['mean_steps']:.2f} | {s['mean_seconds']:.1f} | {s['budget_exhausted']} | "
              f"{s['forbidden_called']} | {'yes' if s['all_ended'] else 'no'} |")
    for s in summaries:
        print(f"{s['model']}: by kind {s['by_kind']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
