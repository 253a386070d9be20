"""`genstack ingest`, `genstack search` and `genstack collections`, run in-process (inproc transport,
the session's temporary data folder)."""

from __future__ import annotations

import json
import re

import pytest

from genstack.retriever.v1 import retriever_pb2 as pb
from services.retriever.cli import find_files, parse_where
from shared.cli import main
from tests.conftest import _data
from tests.unit.test_retriever_parsing import make_pdf


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "kettle.md").write_text("# Kettle\n\nDescale the kettle with vinegar once a month.\n")
    (tmp_path / "sub" / "bike.txt").write_text("Bicycle chains need oil every few hundred kilometres.")
    (tmp_path / "sub" / "garden.html").write_text("<h1>Garden</h1><p>Water the tomatoes early in the morning.</p>")
    (tmp_path / "sub" / "moon.pdf").write_bytes(make_pdf([["The Moon orbits the Earth every 27 days."]]))
    (tmp_path / "photo.png").write_bytes(b"\x89PNG not a document")
    (tmp_path / ".git" / "config.txt").write_text("hidden files are not ingested")
    return tmp_path


def test_find_files_picks_supported_types_and_skips_hidden(folder):
    files, skipped = find_files([folder, folder / "kettle.md"])
    assert sorted(f.path.name for f in files) == ["bike.txt", "garden.html", "kettle.md", "moon.pdf"]
    assert [p.name for p in skipped] == ["photo.png"]
    assert {f.content_type for f in files} == {"text/plain", "text/markdown", "text/html", "application/pdf"}


def test_ingest_with_progress_then_search_prints_scores_and_sources(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    assert main(["ingest", ".", "-c", "cli_home", "--meta", "owner=me", "--progress", "--batch", "2"]) == 0
    out, err = capsys.readouterr()
    assert "ingested 4 files as 4 chunks into 'cli_home'; 1 files of other types skipped" in out
    assert "ingest → cli_home" in err and "4/4" in err and "100%" in err  # the progress bar

    assert main(["search", "how do I clean a kettle", "-c", "cli_home", "-k", "2"]) == 0
    out, _ = capsys.readouterr()
    first = out.splitlines()[0]
    assert first.startswith("1. kettle.md [chars 0-") and "score " in first and "vector " in first
    assert "keyword " in first and "§ Kettle" in out and "Descale the kettle" in out

    assert main(["search", "moon orbit", "-c", "cli_home", "--mode", "keyword", "--where", "owner=me",
                 "--where", "extension:in=pdf,txt", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hits"][0]["source"] == "sub/moon.pdf" and doc["hits"][0]["page"] == 1
    assert doc["hits"][0]["metadata"]["owner"] == "me" and doc["mode"] == "SEARCH_MODE_KEYWORD"

    assert main(["collections"]) == 0
    assert any(line.startswith("cli_home\t4 documents\t4 chunks") for line in capsys.readouterr().out.splitlines())

    # re-ingesting the same files replaces their chunks
    assert main(["ingest", ".", "-c", "cli_home"]) == 0
    capsys.readouterr()
    assert main(["collections", "--json"]) == 0
    (coll,) = [c for c in json.loads(capsys.readouterr().out)["collections"] if c["name"] == "cli_home"]
    assert (coll["documentCount"], coll["chunkCount"]) == ("4", "4")


def test_a_refused_file_stops_the_ingest_and_says_what_was_written(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "sub" / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    code = main(["ingest", ".", "-c", "cli_bad", "--batch", "10"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "(sub/broken.pdf)" in err and "documents[2].data" in err and "not a readable PDF" in err
    assert "written before the error: 0 files, 0 chunks" in err
    assert main(["collections"]) == 0
    assert "cli_bad" not in capsys.readouterr().out

    assert main(["ingest", ".", "-c", "cli_bad", "--keep-going"]) == 3
    out, err = capsys.readouterr()
    assert "ingested 4 files as 4 chunks" in out and "refused sub/broken.pdf" in err


def test_search_errors_are_reported_with_their_status(capsys):
    assert main(["search", "anything", "-c", "no_such_collection"]) == 1  # a failure: the request was well formed
    assert "error (NOT_FOUND): collection 'no_such_collection' does not exist" in capsys.readouterr().err
    assert main(["search", "anything", "-c", "Bad-Name"]) == 2
    assert "error (INVALID_ARGUMENT): collection:" in capsys.readouterr().err


def test_where_conditions():
    assert parse_where("lang=en", pb) == pb.MetadataFilter(key="lang", equals="en")
    assert parse_where("lang:in=en, de", pb).any_of.values == ["en", "de"]
    assert parse_where("year>=2020", pb) == pb.MetadataFilter(key="year", number_range=pb.NumberRange(gte=2020))
    assert parse_where("when<2024-05-01", pb) == pb.MetadataFilter(key="when", date_range=pb.DateRange(lt="2024-05-01"))
    with pytest.raises(SystemExit):
        parse_where("no operator", pb)


def test_the_session_uses_a_temporary_data_folder():
    from services.retriever.settings import RetrieverSettings

    assert str(RetrieverSettings().store_path()).startswith(_data)


def test_queued_ingest_reports_stages(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    assert main(["ingest", ".", "-c", "cli_queued", "--queued", "--progress"]) == 0
    out, err = capsys.readouterr()
    assert "ingested 4 files as 4 chunks into 'cli_queued'" in out
    assert "done 4/4" in err  # the last stage shown on the bar


def _facts(folder, n: int = 120) -> None:
    sentences = [f"Fact number {i} says that the item {i} weighs {i * 7} grams and is kept on shelf {i % 9}."
                 for i in range(n)]
    (folder / "facts.md").write_text("# Facts\n\n" + "\n\n".join(sentences) + "\n")


def _embedding_counts(out: str, err: str) -> tuple[int, list[int]]:
    total = int(out.split(" chunks into")[0].rsplit(" ", 1)[1])
    return total, sorted({int(m) for m in re.findall(rf"embedding (\d+)/{total} chunks", err)})


def test_ingest_progress_moves_per_embedded_slice(tmp_path, capsys, monkeypatch):
    """Embedding is reported per slice of 32 chunks, so the bar moves during a long ingest instead of
    sitting at 0/N until it is done."""
    monkeypatch.chdir(tmp_path)
    _facts(tmp_path)
    assert main(["ingest", "facts.md", "-c", "cli_slices", "--chunk-size", "24", "--chunk-overlap", "0",
                 "--progress"]) == 0
    total, counts = _embedding_counts(*capsys.readouterr())
    assert total > 64 and {0, 32, 64, total} <= set(counts), counts


@pytest.mark.slow
def test_queued_ingest_progress_moves_while_the_worker_embeds(tmp_path, capsys, monkeypatch, service_process):
    """The queued path: a real retriever worker reports each slice through the task's state, and the
    CLI receives counts between 0 and the total before the task ends. The CLI's printed lines are
    throttled to one a second, so the test watches what reaches the CLI, over enough chunks that the
    worker embeds for several polls however fast this machine is."""
    from shared.clients.retriever import RetrieverClient

    service_process("retriever", "worker")
    monkeypatch.chdir(tmp_path)
    _facts(tmp_path, 600)
    seen: list[tuple[str, int, int]] = []
    ingest_large = RetrieverClient.ingest_large

    def watched(self, request, timeout=None, on_progress=None, poll_s=0.2):
        def record(p):
            seen.append((pb.IngestStage.Name(p.stage), p.done, p.total))
            on_progress(p)
        return ingest_large(self, request, timeout=timeout, on_progress=record, poll_s=0.05)

    monkeypatch.setattr(RetrieverClient, "ingest_large", watched)
    assert main(["ingest", "facts.md", "-c", "cli_slices_queued", "--chunk-size", "24", "--chunk-overlap", "0",
                 "--progress", "--queued", "--transport", "celery"]) == 0
    total, _ = _embedding_counts(*capsys.readouterr())
    embedding = [done for stage, done, of in seen if stage == "INGEST_STAGE_EMBEDDING" and of == total]
    assert total > 500 and [c for c in embedding if 0 < c < total], seen
