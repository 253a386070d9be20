"""Orchestrator parts without services: both job stores behave alike; context building."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from services.orchestrator import context as ctx
from services.orchestrator.pipelines import load_pipelines, pick, shipped
from services.orchestrator.store import MemoryJobStore, RedisJobStore, iter_events, next_stream_id
from shared.config import get_settings
from shared.errors import FailedPrecondition, InvalidArgument, Unavailable


@pytest.fixture(params=["memory", "redis"])
def store(request, redis_client):
    return MemoryJobStore() if request.param == "memory" else RedisJobStore(get_settings().redis_url, 60)


def test_idempotency_key_returns_the_first_job(store):
    key = uuid.uuid4().hex
    a, created_a = store.create(uuid.uuid4().hex, {"x": 1}, "answer", 1, key)
    b, created_b = store.create(uuid.uuid4().hex, {"x": 2}, "answer", 1, key)
    assert created_a and not created_b and a == b
    assert store.load(a) == {"x": 1}


def test_events_resume_after_any_id_without_loss(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    ids = [store.append_event(job, f"e{i}", "", {"i": i}, 2) for i in range(10)]
    assert [e.data["i"] for e in store.events(job, "", 0)] == list(range(10))
    assert [e.data["i"] for e in store.events(job, ids[3], 0)] == list(range(4, 10))
    assert store.events(job, ids[-1], 0) == []


def test_watchers_block_until_new_events_and_stop_at_the_terminal_one(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    store.append_event(job, "job.queued", "", {}, 1)
    got = []
    t = threading.Thread(target=lambda: got.extend(e.type for e in iter_events(store, job, "", lambda: False)))
    t.start()
    store.append_event(job, "step.started", "generate", {}, 2)
    store.append_event(job, "job.succeeded", "", {}, 3)
    t.join(10)
    assert not t.is_alive() and got == ["job.queued", "step.started", "job.succeeded"]


def test_cancel_flag(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    assert not store.cancel_requested(job)
    store.request_cancel(job)
    assert store.cancel_requested(job)


def test_events_written_behind_keep_their_ids_and_order(store):
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    last = store.append_event(job, "job.queued", "", {}, 1)
    ids = [last]
    for i in range(20):
        last = store.append_event(job, f"e{i}", "", {"i": i}, 2, after=last)
        ids.append(last)
    store.flush()
    events = store.events(job, "", 0)
    assert [e.event_id for e in events] == ids
    assert [e.type for e in events][1:] == [f"e{i}" for i in range(20)]


def test_a_batch_becomes_visible_at_once(store):
    job = uuid.uuid4().hex
    store.create(job, {"v": 0}, "generate", 1, "")
    last = store.append_event(job, "job.queued", "", {}, 1)
    with store.batch():
        store.append_event(job, "job.succeeded", "", {}, 3, after=last)
        store.save(job, lambda: {"v": 1}, 3)
        if isinstance(store, RedisJobStore):
            store.flush()  # nothing is sent until the batch closes
            assert [e.type for e in store.events(job, "", 0)] == ["job.queued"]
            assert store.load(job) == {"v": 0}
    store.flush()
    assert [e.type for e in store.events(job, "", 0)] == ["job.queued", "job.succeeded"]
    assert store.load(job) == {"v": 1}


def test_concurrent_jobs_write_behind_without_mixing(store):
    jobs = [uuid.uuid4().hex for _ in range(4)]

    def run(job):
        store.create(job, {}, "generate", 1, "")
        last = store.append_event(job, "job.queued", "", {}, 1)
        for i in range(50):
            with store.batch():
                last = store.append_event(job, "step", "", {"i": i}, 2, after=last)
                store.save(job, lambda i=i: {"done": i}, 2)
        store.flush()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for job in jobs:
        assert [e.data.get("i") for e in store.events(job, "", 0)][1:] == list(range(50))
        assert store.load(job) == {"done": 49}


def test_a_failed_write_behind_is_reported_to_its_own_job(redis_client):
    store = RedisJobStore(get_settings().redis_url, 60)
    job, other = uuid.uuid4().hex, uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    store.create(other, {}, "generate", 1, "")
    first = store.append_event(job, "job.queued", "", {}, 1, after="99999999999998-0")  # far in the future
    with store.batch():  # the failing write shares a transaction with another job's
        store.append_event(job, "late", "", {}, 2, after="1-0")  # an id below the stream's last one
        queued = store.append_event(other, "job.queued", "", {}, 1, after="5-0")
    store.flush(other)  # not the other job's failure
    with pytest.raises(Unavailable, match="could not save 1 write"):
        store.flush(job)
    store.flush(job)  # reported once; the store keeps working
    assert [e.event_id for e in store.events(job, "", 0)] == [first] == ["99999999999998-1"]
    assert [e.event_id for e in store.events(other, "", 0)] == [queued]


def test_flush_waits_for_earlier_writes_only(redis_client, monkeypatch):
    # A slow Redis (0.2 s a round trip) and another job that keeps the queue from running dry for
    # 3 s: a job's flush still returns once its own, earlier writes are stored.
    store = RedisJobStore(get_settings().redis_url, 60)
    writer = store._writer
    send = writer._send
    monkeypatch.setattr(writer, "_send", lambda writes: (time.sleep(0.2), send(writes))[1])
    job, other = uuid.uuid4().hex, uuid.uuid4().hex
    for j in (job, other):
        store.create(j, {}, "generate", 1, "")
    mine = store.append_event(job, "job.queued", "", {}, 1)
    prev = store.append_event(other, "job.queued", "", {}, 1)
    stop = threading.Event()

    def busy():
        nonlocal prev
        while not stop.wait(0.01):
            prev = store.append_event(other, "step", "", {}, 2, after=prev)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        time.sleep(0.3)
        mine = store.append_event(job, "step", "", {}, 2, after=mine)
        t0 = time.monotonic()
        store.flush(job)
        waited = time.monotonic() - t0
        assert store.events(job, "", 0)[-1].event_id == mine
        assert waited < 1.5, f"flush waited {waited:.1f} s, for other jobs' later writes"
    finally:
        time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
        stop.set()
        thread.join(10)
    store.flush()
    assert store.events(other, "", 0)[-1].event_id == prev


def test_finished_jobs_are_kept_for_the_configured_retention(redis_client):
    store = RedisJobStore(get_settings().redis_url, 123)
    job = uuid.uuid4().hex
    store.create(job, {}, "generate", 1, "")
    store.append_event(job, "job.queued", "", {}, 1)
    store.request_cancel(job)
    assert redis_client.ttl(f"genstack:job:{job}") == -1  # no expiry while the job lives
    store.finish(job)
    store.flush()
    for suffix in ("", ":events", ":cancel"):
        assert 120 <= redis_client.ttl(f"genstack:job:{job}{suffix}") <= 123


def test_stream_ids_only_grow():
    assert next_stream_id("1-0") != "1-0" and int(next_stream_id("1-0").split("-")[0]) > 1
    future = "99999999999999-4"  # a clock that stepped back: the sequence goes on
    assert next_stream_id(future) == "99999999999999-5"


def chunk(i, text, score):
    return ctx.Chunk(f"c{i}", f"d{i}", f"s{i}", text, score)


def test_context_orders_by_relevance_drops_near_duplicates_and_fits_the_budget():
    text = "The Eiffel Tower in Paris was completed in 1889 for the World's Fair and is 330 metres tall."
    chunks = [
        chunk(1, "Tokyo hosted the Summer Olympics in 1964.", 0.4),
        chunk(2, text, 0.9),
        chunk(3, text.replace("330", "330 metres"), 0.8),  # near-duplicate of c2
        chunk(4, "word " * 400, 0.7),  # too long for the budget
    ]
    kept, dropped = ctx.select_chunks(chunks, budget_tokens=80)
    assert [c.chunk_id for c in kept] == ["c2", "c1"]
    assert {d["chunk_id"]: d["reason"] for d in dropped} == {"c3": "near-duplicate", "c4": "over budget"}
    msgs = ctx.answer_messages("When was it built?", kept)
    assert msgs[0][0] == "system" and "[1]" in msgs[0][1]
    assert "[1] The Eiffel Tower" in msgs[1][1] and "[2] Tokyo" in msgs[1][1]


def test_citations_and_refusals_are_recognised():
    assert ctx.cited_numbers("A [1]. B [2, 3]. C [10]") == {1, 2, 3, 10}
    assert ctx.is_refusal(ctx.NOT_IN_SOURCES)
    assert not ctx.is_refusal("Paris is the capital [1].")


def test_citations_are_attached_only_where_one_source_supports_the_sentence():
    sources = [
        chunk(1, "Tokyo is the capital of Japan. It hosted the Summer Olympics in 1964 and 2021.", 0.9),
        chunk(2, "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.", 0.8),
    ]
    answer = ("The Eiffel Tower in Paris was completed in 1889.\nTokyo hosted the Summer Olympics in 1964! "
              "Tokyo is the capital of Japan [1]. The Eiffel Tower was completed in 1925. Bees dance at dawn.")
    cited, added = ctx.attach_citations(answer, sources)
    assert cited == ("The Eiffel Tower in Paris was completed in 1889 [2].\nTokyo hosted the Summer Olympics "
                     "in 1964 [1]! Tokyo is the capital of Japan [1]. The Eiffel Tower was completed in 1925. "
                     "Bees dance at dawn.")
    assert [(a["source"], a["support"]) for a in added] == [(2, 1.0), (1, 1.0)]
    # a wrong number or a claim no source makes stays uncited: the validator sees it as it is
    assert ctx.attach_citations("It opened in 1925 in Paris.", sources) == ("It opened in 1925 in Paris.", [])
    assert ctx.attach_citations(ctx.NOT_IN_SOURCES, sources)[1] == []


def test_pipelines_are_data_and_checked(tmp_path):
    assert [s.name for s in shipped()["answer"].steps] == ["retrieve", "screen_sources", "build_context",
                                                         "generate_answer", "cite_answer", "validate_answer"]
    f = tmp_path / "p.json"
    f.write_text('{"quick-answer": {"kind": "answer", "steps": [{"name": "retrieve"}, {"name": "build_context"},'
                 ' {"name": "generate_answer"}]}}')
    pipelines = load_pipelines(str(f))
    assert pick(pipelines, "quick-answer", "answer")[1].retry is None
    with pytest.raises(InvalidArgument, match="pipeline"):
        pick(pipelines, "quick-answer", "generate")
    f.write_text('{"broken": {"kind": "answer", "steps": [{"name": "no_such_step"}]}}')
    with pytest.raises(FailedPrecondition, match="no_such_step"):
        load_pipelines(str(f))


def test_a_short_answer_with_no_citation_gets_the_source_holding_what_it_adds():
    sources = [chunk(1, "The VACUUM command rebuilds the database file.", 0.9),
               chunk(2, "If Y is omitted, a comma (\",\") is used as the separator between instances of X.", 0.8)]
    question = "Which separator does group_concat() use when none is given?"
    cited, added = ctx.attach_citations("group_concat() uses a comma when none is given.", sources, question=question)
    assert cited == "group_concat() uses a comma when none is given [2]." and added[0]["source"] == 2
    # a sentence that adds nothing the sources hold, or a number no source has, stays uncited
    assert ctx.attach_citations("It uses a semicolon.", sources, question=question)[1] == []
    assert ctx.attach_citations("A comma, since 1999.", sources, question=question)[1] == []


def test_an_echoed_question_before_the_answer_is_dropped():
    assert ctx.tidy_answer("At what size does it checkpoint [2]? It checkpoints at 1000 pages [2].") == (
        "It checkpoints at 1000 pages [2].")
    assert ctx.tidy_answer("Is it on by default?") == "Is it on by default?"  # nothing else to keep
