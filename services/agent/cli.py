"""`genstack agent "goal" --tool search --tool calculator`: an agent run as an orchestrator job,
its steps printed as they happen (embedded by default, like `genstack ask`)."""

from __future__ import annotations

import argparse
import json
import sys

TRANSPORTS = ["inproc", "grpc", "celery"]


def register(sub) -> None:
    p = sub.add_parser("agent", help="let the agent reach a goal with tools, step by step, within a budget")
    p.add_argument("goal", help="what to do, e.g. \"How many moons does Mars have, times 12?\"")
    p.add_argument("--tool", action="append", default=[], metavar="TOOL",
                   help="a tool the agent may use (repeatable; default: search and calculator); final_answer is "
                   "always allowed")
    p.add_argument("--max-steps", type=int, default=0, help="tool steps before a final answer is forced (default 6)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="time budget in seconds (default 300)")
    p.add_argument("--max-tokens", type=int, default=0, help="generated-token budget (default 1024)")
    p.add_argument("--model", action="append", default=[],
                   help="generator model; repeat for a cascade, small model first (default: the configured one)")
    p.add_argument("--collection", default="", help="collection the search tool looks in (default: 'default')")
    p.add_argument("--approve", action="append", default=[], metavar="TOOL",
                   help="this tool needs approval before each call (asked on the terminal; repeatable)")
    p.add_argument("--timeout", type=float, default=None, help="job deadline in seconds (default: 600)")
    p.add_argument("--transport", choices=TRANSPORTS, default=None,
                   help="how to reach the orchestrator (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per step (RunAgentResponse, proto JSON mapping); the last has finalAnswer")
    p.set_defaults(func=agent)


_STATUS = {"STEP_STATUS_OK": "", "STEP_STATUS_TOOL_ERROR": "tool error", "STEP_STATUS_REFUSED": "refused",
           "STEP_STATUS_AWAITING_APPROVAL": "waits for approval", "STEP_STATUS_REJECTED": "rejected",
           "STEP_STATUS_REPEATED": "repeated", "STEP_STATUS_CANCELLED": "cancelled"}


def _short(text: str, width: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_step(msg: dict) -> str:
    """One agent step for people."""
    s = msg.get("step", {})
    status = s.get("status", "")
    lines = []
    if status == "STEP_STATUS_FINAL" or msg.get("finalAnswer"):
        forced = " (forced)" if s.get("forced") else ""
        lines.append(f"[{s.get('index', '?')}] final answer{forced}: {msg.get('finalAnswer', '')}")
    else:
        extra = _STATUS.get(status, status)
        tool = s.get("tool") or "(no tool)"
        lines.append(f"[{s.get('index', '?')}] {tool} {s.get('argumentsJson', '')}" + (f"  — {extra}" if extra else ""))
        if s.get("observation") and status != "STEP_STATUS_AWAITING_APPROVAL":
            flag = "  [flagged by the injection check]" if s.get("injectionFlagged") else ""
            lines.append(f"    → {_short(s['observation'])}{flag}")
    if s.get("note"):
        lines.append(f"    ({s['note']})")
    return "\n".join(lines)


def _ask_reviewer(run_id: str, msg: dict, out) -> None:
    from shared.clients import client_for

    s = msg["step"]
    client = client_for("agent")
    if not sys.stdin.isatty():
        out.write(f"    step {s['index']} waits: approve with ApproveStep(run_id={run_id!r}, step={s['index']})\n")
        return
    answer = input(f"    allow {s.get('tool')} {s.get('argumentsJson', '')}? [y/N] ").strip().lower()
    if answer in ("y", "yes"):
        client.approve_step(run_id, int(s["index"]))
    else:
        client.reject_step(run_id, int(s["index"]), "the user said no")


def agent(args: argparse.Namespace) -> int:
    from genstack.agent.v1 import agent_pb2 as apb
    from genstack.orchestrator.v1 import orchestrator_pb2 as opb
    from services.orchestrator.cli import _client, follow
    from shared.errors import InvalidArgument

    if not args.goal.strip():
        raise InvalidArgument("must be a non-empty goal, e.g. genstack agent \"What is 12*7?\" --tool calculator",
                              field="goal")
    request = apb.RunAgentRequest(goal=args.goal, allowed_tools=args.tool, models=args.model,
                                  collection=args.collection, require_approval=args.approve,
                                  budget=apb.Budget(max_steps=args.max_steps, max_seconds=args.max_seconds,
                                                    max_tokens=args.max_tokens))
    submit = opb.SubmitJobRequest(agent=request)
    if args.timeout is not None:
        submit.deadline_s = args.timeout
    out = sys.stdout
    with _client(args.transport) as client:
        job_id = client.submit_job(submit).job_id
        last = None
        for e in follow(client, job_id):
            if e.type == "agent.step":
                msg = json.loads(e.data_json)
                status = msg.get("step", {}).get("status")
                if args.json:
                    out.write(json.dumps(msg, ensure_ascii=False) + "\n")
                else:
                    out.write(format_step(msg) + "\n")
                out.flush()
                if status == "STEP_STATUS_AWAITING_APPROVAL" and msg.get("state") == "RUN_STATE_AWAITING_APPROVAL":
                    _ask_reviewer(job_id, msg, out if not args.json else sys.stderr)
                last = msg
            elif e.type == "step.failed" and not args.json:
                sys.stderr.write(f"[{e.step} failed: {json.loads(e.data_json or '{}').get('error', '')}]\n")
        job = client.get_job(job_id)
    if not args.json:
        usage = (last or {}).get("usage", {})
        state = (last or {}).get("state", "RUN_STATE_UNSPECIFIED").removeprefix("RUN_STATE_").lower()
        out.write(f"\n{state} · {usage.get('steps', 0)} tool steps · {usage.get('completionTokens', 0)} tokens · "
                  f"{float(usage.get('seconds', 0)):.1f} s · job {job_id}\n")
        if job.error or (last or {}).get("error"):
            out.write(f"{job.error or last.get('error')}\n")
    return 0 if job.state == opb.JOB_STATE_SUCCEEDED else 1
