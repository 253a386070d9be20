"""Answer quality over real documentation: accuracy, right source cited, honest refusals, seconds per
question, per model and per pipeline variant, in one run.

Corpora are Debian documentation packages (HTML), located under /usr/share/doc and installed with
apt-get when missing and this runs as root (otherwise it stops, loudly, with the command to run):
  sqlite  sqlite3-doc  SQLite's HTML documentation (the tuning corpus, plus a held-out part)
  git     git-doc      Git's HTML manual pages (held out as a whole: never used to choose settings)
The questions (bench/data/answer_quality/questions.yaml) ask for one fact each; about 60 (SQLite)
and 50 (Git) pages are ingested: every page a question names plus fixed neighbours on related
topics (Git's largest pages, git-config and git-log, are left out to keep ingestion short here).

Everything runs in this process over the inproc transport (retriever, generator, validator and the
orchestrator's answer pipeline), so it measures the pipeline, not the transport; `--served` sends
the same jobs to a running `genstack up` over gRPC instead. The index lives under
~/.cache/genstack/bench-answer-quality and is rebuilt only when the page list or chunking changes.

    python bench/answer_quality.py                       # every variant, both models, all questions
    python bench/answer_quality.py --split tune --limit 20 --variants fact,sentences --models qwen2.5-0.5b
    python bench/answer_quality.py --served localhost:50050 --variants default --split all

A question counts as answered right when the answer contains one of its accepted answers (case and
digit grouping ignored, citations stripped); right source means the answer cites the page that holds
the fact; an honest refusal is answered=false on a question whose answer is in no page.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "answer_quality" / "questions.yaml"
CACHE = Path.home() / ".cache" / "genstack" / "bench-answer-quality"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
os.environ.setdefault("GENSTACK_DATA_DIR", str(CACHE / "data"))
os.environ.setdefault("GENSTACK_MODEL_CACHE", str(Path.home() / ".cache" / "genstack" / "models"))
sys.path.insert(0, str(ROOT))

CORPORA = {
    "sqlite": {
        "package": "sqlite3-doc", "dir": "/usr/share/doc/sqlite3",
        # neighbours of the question pages: same topics, so retrieval has to choose
        "extra": ["lang_insert", "lang_update", "lang_delete", "lang_conflict", "lang_reindex",
                  "lang_explain", "lang_indexedby", "sharedcache", "backup",
                  "quirks", "whentouse", "nulls", "lang_savepoint", "lang_attach", "lang_createindex",
                  "lang_createtrigger", "lang_createview", "uri", "versionnumbers", "lang_keywords",
                  "deterministic", "lang_naming", "lang_corefunc", "lang_droptable",
                  "lang_createvtab", "datatypes"],
    },
    "git": {
        "package": "git-doc", "dir": "/usr/share/doc/git-doc",
        "extra": ["git-commit", "git-worktree", "git-bisect", "git-pack-objects", "git-repack", "git-branch",
                  "git-clone", "git-prune", "git-fsck", "git-notes", "git-credential-store", "git-cherry-pick",
                  "git-revert", "git-reset", "git-status", "git-blame", "git-archive", "git-remote", "git-submodule",
                  "git-clean", "git-am", "git-grep", "git-count-objects", "git-prune-packed", "git-multi-pack-index",
                  "git-commit-graph", "git-bundle", "git-init", "git-mv", "git-rm", "git-restore", "git-switch",
                  "git-reflog"],
    },
}

# Pipeline variants: each is the shipped `answer` pipeline with some step parameters changed.
# "default" is the shipped pipeline as it is.
VARIANTS: dict[str, dict] = {
    "default": {},
    # the pipeline before issue 20: two-sentence prompt, 160 tokens, refusals not validated
    "before": {"build_context": {"style": "sentences"},
               "generate_answer": {"style": "sentences", "max_new_tokens": 160, "max_sentences": 0},
               "validate_answer": {"refusal_policy": ""}},
    "sentences": {"build_context": {"style": "sentences"}, "generate_answer": {"style": "sentences"}},
    "fact": {"build_context": {"style": "fact"}, "generate_answer": {"style": "fact"}},
    "fact-sections": {"build_context": {"style": "fact", "sections": True},
                      "generate_answer": {"style": "fact", "sections": True}},
    "pick": {"build_context": {"style": "extract"}, "generate_answer": {"style": "extract", "pick_sentence": True}},
    "extract": {"build_context": {"style": "extract"}, "generate_answer": {"style": "extract"}},
    "fact-noretry": {"build_context": {"style": "fact"}, "generate_answer": {"style": "fact"}, "$max_retries": 0},
    "fact-top3": {"retrieve": {"top_k": 3}, "build_context": {"style": "fact"}, "generate_answer": {"style": "fact"}},
    "fact-top6": {"retrieve": {"top_k": 6}, "build_context": {"style": "fact"}, "generate_answer": {"style": "fact"}},
    # the default pipeline over an index built without HTML definition terms (see parsing.HTML_TERMS)
    "default-flat": {"$index": "flat"},
    # the retry over the validator's passage also shows the rejected answer and the feedback's first sentence
    "focus-feedback": {"generate_answer": {"focus_feedback": True}},
    "fact-cascade": {"build_context": {"style": "fact"},
                     "generate_answer": {"style": "fact", "models": ["smollm2-135m", "qwen2.5-0.5b"]}},
}


def load_questions() -> list[dict]:
    import yaml

    return yaml.safe_load(DATA.read_text())["questions"]


def locate(corpus: str, install: bool) -> Path | None:
    spec = CORPORA[corpus]
    folder = Path(spec["dir"])
    if folder.is_dir() and any(folder.glob("*.html")):
        return folder
    command = f"apt-get install -y {spec['package']}"
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"[{corpus}] {folder} is missing: running `{command}`", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        rc = subprocess.run(command.split(), env=env, stdout=subprocess.DEVNULL).returncode
        if rc != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env)
            subprocess.run(command.split(), env=env, stdout=subprocess.DEVNULL)
        if folder.is_dir() and any(folder.glob("*.html")):
            return folder
    print(f"SKIPPED corpus {corpus!r}: {folder} has no HTML. Install it with `sudo {command}` "
          f"(after `sudo apt-get update`) and run again.", file=sys.stderr, flush=True)
    return None


def pages_for(corpus: str, questions: list[dict]) -> list[str]:
    named = {p for q in questions if q["corpus"] == corpus for p in (q.get("pages") or [q.get("page")]) if p}
    return sorted(named | {f"{n}.html" for n in CORPORA[corpus]["extra"]})


def ensure_index(core, corpus: str, folder: Path, pages: list[str], terms: bool = True, served=None) -> str:
    """Ingest the pages once; the collection name carries a hash of the page list, the chunk settings
    and the parser (with `terms` False, HTML definition terms are not made minor headings). With
    `served` (a function that runs a job on a served stack) the pages go to that stack, every time."""
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb
    from genstack.retriever.v1 import retriever_pb2 as rpb
    from services.retriever import parsing
    from services.retriever.settings import RetrieverSettings

    rs = RetrieverSettings()
    chunking = Path(ROOT / "services" / "retriever" / "chunking.py").read_bytes() + Path(
        ROOT / "services" / "retriever" / "parsing.py").read_bytes()
    key = hashlib.sha256(json.dumps([pages, rs.chunk_size_tokens, rs.chunk_overlap_tokens, terms]).encode()
                         + chunking)
    collection = f"aq_{corpus}_{key.hexdigest()[:10]}"
    marker = CACHE / f"{collection}.done"
    if marker.exists() and served is None:
        return collection
    t0 = time.perf_counter()
    docs = []
    for name in pages:
        path = folder / name
        if not path.is_file():
            print(f"[{corpus}] page {name} is missing from {folder}; skipped", file=sys.stderr)
            continue
        docs.append(rpb.Document(id=name, text=path.read_text(errors="replace"), content_type="text/html",
                                 source=f"{corpus}/{name}"))
    request = pb.SubmitJobRequest(deadline_s=3600, ingest=rpb.IngestDocumentsRequest(collection=collection,
                                                                                     documents=docs))
    if served is not None:
        record = served(request)
    else:
        job, _ = core.create(request)
        parsing.HTML_TERMS = terms
        try:
            record = core.run(job)
        finally:
            parsing.HTML_TERMS = True
    if record.state != pb.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"ingest of {corpus} failed: {record.error}")
    print(f"[{corpus}] ingested {len(docs)} pages, {record.ingest.chunks_written} chunks in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    if served is not None:
        return collection  # that stack's index, not this machine's cache
    CACHE.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pages": pages, "chunks": record.ingest.chunks_written}))
    return collection


_CITE = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")


def norm(text: str) -> str:
    text = _CITE.sub(" ", text).lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"(?<![0-9a-z_])-d(?=[a-z_]+_[a-z_])", "", text)  # a compile flag -DSQLITE_X names SQLITE_X
    return " ".join(text.split())


def mentions(text: str, accepted: str) -> bool:
    """`accepted` as a whole token run of `text`: "0" is not in "100", "2" is not in "2.5" or "x2"."""
    pattern = r"(?<![0-9a-z_])" + re.escape(accepted) + r"(?![0-9a-z_])(?!\.\d)"
    return re.search(pattern, text) is not None


def score(q: dict, job) -> dict:
    """One question's outcome from its finished job record."""
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    a = job.answer
    pages = set(q.get("pages") or [q.get("page")])
    cited_pages = {c.source.split("/", 1)[-1] for c in a.citations if c.cited}
    retrieved_pages = {c.source.split("/", 1)[-1] for c in a.citations}
    failed = [f"{r.name}: {r.message}"[:200] for r in a.verdict.results if not r.passed and not r.advisory]
    out = {"id": q["id"], "answer": a.answer, "answered": a.answered, "attempts": a.attempts, "model": a.model,
           "rejected_answer": a.rejected_answer, "failed_checks": failed,
           "passed": job.state == pb.JOB_STATE_SUCCEEDED, "error": job.error_code if job.error_code not in (
               "", "FAILED_PRECONDITION") else job.error_code}
    if q.get("unanswerable"):
        out["honest"] = not a.answered
        return out
    right = a.answered and any(mentions(norm(a.answer), norm(ans)) for ans in q["answers"])
    out.update(right=right, cited_right=bool(cited_pages & pages), retrieved=bool(retrieved_pages & pages),
               wrong_passed=out["passed"] and a.answered and not right)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(rows: list[dict]) -> dict:
    ans = [r for r in rows if "right" in r]
    una = [r for r in rows if "honest" in r]
    secs = [r["seconds"] for r in rows]

    def share(items, key):
        return (sum(1 for r in items if r[key]) / len(items)) if items else float("nan")

    return {"n": len(ans), "n_unanswerable": len(una), "accuracy": share(ans, "right"),
            "cited_right": share(ans, "cited_right"), "retrieved": share(ans, "retrieved"),
            "honest_refusals": share(una, "honest"), "wrong_passed": sum(1 for r in ans if r["wrong_passed"]),
            "mean_s": statistics.fmean(secs) if secs else float("nan"), "p50_s": percentile(secs, 50),
            "p95_s": percentile(secs, 95), "attempts": statistics.fmean(r["attempts"] for r in rows) if rows else 0}


def pipelines_file(variants: list[str], models: list[str]) -> Path:
    """A pipelines file defining one pipeline per (variant, model) from the shipped `answer` pipeline."""
    from services.orchestrator.pipelines import shipped

    base = shipped()["answer"].model_dump()
    doc = {}
    for v in variants:
        for m in models:
            p = json.loads(json.dumps(base))
            for st in p["steps"]:
                st["params"].update(VARIANTS[v].get(st["name"], {}))
                if st["name"] == "generate_answer" and "models" not in st["params"] and m:
                    st["params"]["models"] = [m]
            if "$max_retries" in VARIANTS[v]:
                p["retry"]["max_retries"] = VARIANTS[v]["$max_retries"]
            doc[f"aq-{v}-{m or 'default'}"] = p
    path = CACHE / f"pipelines-{os.getpid()}.json"  # one per run: runs may go side by side
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="before,default", help=f"comma-separated; known: {', '.join(VARIANTS)}")
    ap.add_argument("--models", default="qwen2.5-0.5b,smollm2-135m", help="comma-separated generator models")
    ap.add_argument("--split", default="all", choices=("tune", "heldout", "all"))
    ap.add_argument("--corpus", default="sqlite,git")
    ap.add_argument("--limit", type=int, default=0, help="at most this many questions per corpus and split")
    ap.add_argument("--only", default="", help="comma-separated question ids")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get; skip missing corpora")
    ap.add_argument("--served", default="", help="host:port of a running orchestrator (genstack up) to use")
    ap.add_argument("--json", default="", help="write every row and summary to this file")
    args = ap.parse_args()

    import shared  # noqa: F401 - generated stubs on sys.path
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.served and variants != ["default"]:
        ap.error("--served measures the stack's shipped pipeline: use --variants default")
    models = [m for m in args.models.split(",")]
    questions = load_questions()
    if args.only:
        wanted = set(args.only.split(","))
        questions = [q for q in questions if q["id"] in wanted]
    if args.split != "all":
        questions = [q for q in questions if q["split"] == args.split]
    corpora = {}
    for corpus in args.corpus.split(","):
        folder = locate(corpus, not args.no_install)
        if folder is not None:
            corpora[corpus] = folder
    if not corpora:
        print("no corpus available; nothing measured", file=sys.stderr)
        return 0

    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.settings import OrchestratorSettings
    from shared.config import Settings

    pfile = pipelines_file(variants, models)
    local = OrchestratorCore(OrchestratorSettings(store="memory", pipelines_file=str(pfile)),
                             Settings(transport="inproc"))
    all_questions = load_questions()
    served = None
    if args.served:
        from shared.clients.orchestrator import OrchestratorClient

        client = OrchestratorClient("grpc", address=args.served)

        def served(request):
            job = client.submit_job(request)
            while True:
                rec = client.get_job(job.job_id)
                if rec.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                    return rec
                time.sleep(0.05)
    collections = {c: ensure_index(local, c, f, pages_for(c, all_questions), served=served)
                   for c, f in corpora.items()}
    flat = {}
    if any(VARIANTS[v].get("$index") == "flat" for v in variants):
        if args.served:
            ap.error("the default-flat variant builds its own index in this process; not with --served")
        asked = {q["corpus"] for q in questions}
        flat = {c: ensure_index(local, c, f, pages_for(c, all_questions), terms=False) for c, f in corpora.items()
                if c in asked}
    if served is not None:
        run_job = served
    else:
        def run_job(request):
            job, _ = local.create(request)
            return local.run(job)

    chosen: list[dict] = []
    for corpus in corpora:
        for split in ("tune", "heldout"):
            group = [q for q in questions if q["corpus"] == corpus and q["split"] == split]
            if args.limit:
                answerable = [q for q in group if not q.get("unanswerable")][: args.limit]
                refusals = [q for q in group if q.get("unanswerable")][: max(2, args.limit // 5)]
                group = answerable + refusals
            chosen.extend(group)
    print(f"{len(chosen)} questions x {len(variants)} variant(s) x {len(models)} model(s); "
          f"corpora: {', '.join(corpora)}", flush=True)

    # warm up: load every model once so that no question pays for loading
    for m in models:
        run_job(pb.SubmitJobRequest(pipeline="" if args.served else f"aq-{variants[0]}-{m or 'default'}",
                                    answer=pb.AnswerInput(question="warm-up", models=[m] if m else [],
                                                          collection=next(iter(collections.values())),
                                                          max_retries=0)))

    rows: list[dict] = []
    for v in variants:
        for m in models:
            pipeline = f"aq-{v}-{m or 'default'}"
            for q in chosen:
                index = flat if VARIANTS[v].get("$index") == "flat" else collections
                request = pb.SubmitJobRequest(pipeline=pipeline, answer=pb.AnswerInput(
                    question=q["question"], collection=index[q["corpus"]]))
                if args.served:  # the served stack runs its shipped pipeline; the model goes in the request
                    request.pipeline = ""
                    request.answer.models[:] = [m] if m else []
                t0 = time.perf_counter()
                record = run_job(request)
                row = score(q, record)
                row.update(seconds=time.perf_counter() - t0, variant=v, model_asked=m, split=q["split"],
                           corpus=q["corpus"])
                rows.append(row)
                mark = ("ok " if row.get("right") else "-- ") if "right" in row else (
                    "ok " if row["honest"] else "-- ")
                cited = ("cited " if row["cited_right"] else "      ") if "right" in row else "      "
                print(f"  {mark}{cited}{v:<12} {m:<14} {q['id']:<7} {row['seconds']:5.1f}s  "
                      f"{' '.join(row['answer'].split())[:110]}", flush=True)
                if args.json:  # written as it goes, so that a run cut short still leaves its rows
                    Path(args.json).write_text(json.dumps({"rows": rows, "summary": []}, indent=1))

    print("\nvariant       model           corpus  split     n  accuracy  cited  retrieved  refusals(n)  "
          "wrong-passed  mean s  p50 s  p95 s  attempts")
    summary = []
    for v in variants:
        for m in models:
            for corpus in corpora:
                for split in ("tune", "heldout"):
                    group = [r for r in rows if r["variant"] == v and r["model_asked"] == m
                             and r["corpus"] == corpus and r["split"] == split]
                    if not group:
                        continue
                    s = summarise(group)
                    summary.append({"variant": v, "model": m, "corpus": corpus, "split": split, **s})
                    print(f"{v:<13} {m:<15} {corpus:<7} {split:<8} {s['n']:>3}  {s['accuracy']:8.0%}  "
                          f"{s['cited_right']:5.0%}  {s['retrieved']:9.0%}  {s['honest_refusals']:7.0%} "
                          f"({s['n_unanswerable']:>2})  {s['wrong_passed']:12d}  {s['mean_s']:6.1f}  "
                          f"{s['p50_s']:5.1f}  {s['p95_s']:5.1f}  {s['attempts']:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    local.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
