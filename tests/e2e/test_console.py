"""The web console in a real headless browser (Debian's chromium through chromium-driver and
selenium): `genstack console` runs as its own process in front of a real orchestrator gRPC server
(embedded services with the real default models, in this process). From the page: submit an ask
job and watch its events arrive, the answer stream in and its sources with the cited passages;
submit an image job and see the image rendered; open a failed job and read why it failed.
Screenshots of these views are written to docs/ with GENSTACK_CONSOLE_SCREENSHOTS=1 (a plain test run
leaves the tracked pictures alone)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from genstack.retriever.v1 import retriever_pb2 as rpb
from tests.support import ROOT, unique

pytestmark = pytest.mark.slow

DOCS = ROOT / "docs"
TEXTS = {
    "eiffel": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair. It is 330 metres tall.",
    "bees": "Honey bees tell each other where flowers are with a waggle dance performed inside the hive.",
}
BROWSER_PACKAGES = ("chromium", "chromium-driver")
#: the tests' small default model: quick to load and to run (its answer may well be rejected, which the
#: page shows too)
ANSWER_MODEL = "smollm2-135m"


def _browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; installs Debian's packages when missing and this runs as root
    with apt-get (as CI does), else skips saying what to install."""
    def found():
        return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

    browser, driver = found()
    if not (browser and driver) and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", *BROWSER_PACKAGES], check=False, capture_output=True,
                       timeout=900)
        browser, driver = found()
    if not (browser and driver):
        pytest.skip("no headless browser: `apt-get install -y chromium chromium-driver` (.ci/run installs them)")
    return browser, driver


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """An orchestrator gRPC server (embedded steps: the real retriever, generator, validator and
    image models in this process) and `genstack console` as a separate process in front of it."""
    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.grpc_api import OrchestratorApi
    from services.orchestrator.settings import OrchestratorSettings
    from shared.clients.retriever import RetrieverClient
    from shared.config import Settings
    from shared.grpc_server import Server

    core = OrchestratorCore(OrchestratorSettings(store="memory", recover=False), base=Settings(transport="inproc"))
    server = Server(OrchestratorApi(core), 0, host="127.0.0.1").start(warm_up_in_background=False)
    collection = unique("console").replace("-", "_")
    with RetrieverClient("inproc") as rc:
        rc.ingest_documents(rpb.IngestDocumentsRequest(collection=collection, documents=[
            rpb.Document(id=k, text=v, content_type="text/plain", source=f"{k}.txt") for k, v in TEXTS.items()]))
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "console", "--port", "0", "--host", "127.0.0.1",
                             "--orchestrator", f"127.0.0.1:{server.port}"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    port = None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and port is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("GENSTACK_LISTENING console"):
            port = int(line.split()[2])
    if port is None:
        proc.kill()
        server.stop(0)
        raise AssertionError("the console did not start:\n" + "".join(lines))
    try:
        yield f"http://127.0.0.1:{port}", collection
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.stop(0)
        core.close()


@pytest.fixture(scope="module")
def page(console):
    browser, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver, console[0], console[1]
    finally:
        driver.quit()


def _wait(driver, predicate, timeout: float = 180, what: str = ""):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the page is still changing
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last!r}\nevents: {_event_types(driver)}")


def _event_types(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#events li')].map(li => li.dataset.type)")


def _timeline(driver) -> list[str]:
    """The step names on the timeline, read in one call (it is redrawn when the record is fetched)."""
    return driver.execute_script("return [...document.querySelectorAll('#timeline .bar-row .mono')]"
                                 ".map(e => e.textContent)")


def _tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#kind-tabs button"), 30, "the kind tabs")
    [b for b in driver.find_elements(By.CSS_SELECTOR, "#kind-tabs button") if b.text == label][0].click()


def _fill(driver, values: dict, extra: dict | None = None) -> None:
    from selenium.webdriver.common.by import By

    for name, value in values.items():
        field = driver.find_element(By.CSS_SELECTOR, f"#submit-form [name='{name}']")
        field.clear()
        field.send_keys(str(value))
    driver.execute_script("document.querySelector('#extra-json').value = arguments[0]", json.dumps(extra or {}))
    driver.find_element(By.ID, "submit-button").click()


def _screenshot(driver, name: str) -> None:
    if os.environ.get("GENSTACK_CONSOLE_SCREENSHOTS", "0") != "1":
        return
    png = driver.get_screenshot_as_png()
    (DOCS / name).write_bytes(_shrink(png))


def _shrink(png: bytes) -> bytes:
    """Screenshots in docs/ stay small: a palette PNG (the page has few colours)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


def test_kinds_offered_are_those_of_the_orchestrator(console):
    url, _ = console
    info = json.loads(urllib.request.urlopen(f"{url}/api/info", timeout=30).read())
    assert info["source"] == "orchestrator"  # read over gRPC reflection, not this checkout's stubs
    assert {"answer", "image"} <= set(info["kinds"])
    page_html = urllib.request.urlopen(f"{url}/", timeout=30).read().decode()
    assert "/static/app.js" in page_html


def test_ask_job_streams_its_answer_and_shows_cited_sources(page):
    from selenium.webdriver.common.by import By

    driver, url, collection = page
    driver.get(url)
    _tab(driver, "ask")
    _fill(driver, {"question": "When was the Eiffel Tower completed?", "collection": collection, "topK": 2,
                   "maxRetries": 0, "models": ANSWER_MODEL}, {"sampling": {"maxNewTokens": 40}})
    # events arrive while the job runs, the generation's deltas among them
    _wait(driver, lambda: "step.started" in _event_types(driver), 60, "the first step event")
    _wait(driver, lambda: {"job.succeeded", "job.failed"} & set(_event_types(driver)), 360, "the job's end")
    types = _event_types(driver)
    assert types[0] == "job.queued" and "generate.delta" in types and "step.finished" in types, types
    # the answer (or, when the validator rejected it, the rejected attempt) stays on the page
    answer = _wait(driver, lambda: driver.find_element(By.ID, "answer").text.strip(), 30, "the answer")
    assert len(answer) > 3
    # the sources come with the final record, fetched when the job's last event arrived
    # read in one script call: the list is redrawn whenever the record is fetched again
    sources = _wait(driver, lambda: driver.execute_script(
        "return [...document.querySelectorAll('#sources li .passage')].map(e => e.textContent)"), 30, "the sources")
    assert 1 <= len(sources) <= 2
    passages = " ".join(sources)
    assert "1889" in passages  # the retrieved passage itself is shown
    names = _timeline(driver)
    assert names[0] == "retrieve" and names.index("build_context") < names.index("generate_answer"), names
    _wait(driver, lambda: driver.find_element(By.ID, "live").text.lower() == "ended", 20, "the stream's end")
    # the validator's verdict, check by check, with its evidence or feedback
    verdict = _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#verdicts .verdict"), 20, "the verdict")
    assert not driver.find_element(By.ID, "verdict-card").get_attribute("hidden")
    assert verdict[0].find_elements(By.CSS_SELECTOR, ".check") and ("passed" in verdict[0].text
                                                                     or "failed" in verdict[0].text)
    # the job list shows it
    _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr"), 20, "the job list")
    _screenshot(driver, "console-answer.png")


def test_image_job_shows_previews_and_renders_the_image(page):
    from selenium.webdriver.common.by import By

    driver, url, _ = page
    driver.get(url)
    _tab(driver, "image")
    _fill(driver, {"prompt": "a red circle on a blue background", "steps": 8, "seed": 3})
    _wait(driver, lambda: {"job.succeeded", "job.failed"} & set(_event_types(driver)), 240, "the image job's end")
    assert "image.progress" in _event_types(driver)
    img = _wait(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#media img.result-image"), 20, "the image")
    width = _wait(driver, lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                         img), 20, "the image to load")
    assert width > 0
    src = img.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert driver.find_elements(By.CSS_SELECTOR, "#previews img")  # a denoising preview was shown live
    _screenshot(driver, "console-image.png")


def test_a_failed_job_says_why(page):
    from selenium.webdriver.common.by import By

    driver, url, _ = page
    driver.get(url)
    _tab(driver, "ask")
    _fill(driver, {"question": "Is anything here?", "collection": "no_such_collection_here"})
    _wait(driver, lambda: "job.failed" in _event_types(driver), 120, "the job to fail")
    error = _wait(driver, lambda: driver.find_element(By.ID, "job-error").text, 20, "the error box")
    assert "NOT_FOUND" in error and "no_such_collection_here" in error and "step retrieve" in error, error
    assert driver.find_element(By.ID, "job-state").text.lower() == "failed"
    _screenshot(driver, "console-failed.png")
    # and the list can be filtered down to failed jobs
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "filter-state")).select_by_value("failed")
    _wait(driver, lambda: {r.find_elements(By.TAG_NAME, "td")[2].text.lower()
                           for r in driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")} == {"failed"}, 20,
          "a list of failed jobs only")


def test_video_job_shows_its_progress_and_plays_the_clip(page):
    from selenium.webdriver.common.by import By

    driver, url, _ = page
    driver.get(url)
    _tab(driver, "video")
    _fill(driver, {"prompt": "a red circle moving right on a blue background", "numFrames": 4, "steps": 2,
                   "seed": 1})
    _wait(driver, lambda: {"job.succeeded", "job.failed"} & set(_event_types(driver)), 300, "the video job's end")
    assert "video.progress" in _event_types(driver)
    clip = _wait(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#media video"), 20, "the clip")
    # the job keeps the clip as an artifact; the console serves it to the page
    src = clip.get_attribute("src")
    assert "/api/artifact?uri=" in src, src
    assert urllib.request.urlopen(src, timeout=30).read()[4:8] == b"ftyp"  # an MP4
    assert driver.find_elements(By.CSS_SELECTOR, "#previews img")  # preview frames while it denoised
    # the video-default policy's verdict is shown with the clip
    assert _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#verdicts .verdict"), 20, "its verdict")


def test_agent_job_shows_its_steps_and_final_answer(page):
    from selenium.webdriver.common.by import By

    driver, url, _ = page
    driver.get(url)
    _tab(driver, "agent")
    _fill(driver, {"goal": "What is 17*23?", "allowedTools": "calculator", "model": ANSWER_MODEL})
    _wait(driver, lambda: {"job.succeeded", "job.failed"} & set(_event_types(driver)), 300, "the agent job's end")
    types = _event_types(driver)
    assert "agent.step" in types and "job.succeeded" in types, types
    answer = _wait(driver, lambda: driver.find_element(By.ID, "answer").text.strip(), 30, "the final answer")
    assert answer


@pytest.fixture(scope="module")
def guarded_console(tmp_path_factory):
    """An orchestrator that wants a bearer token (GENSTACK_AUTH_TOKENS_FILE) and a console in front of
    it that has no token of its own."""
    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.grpc_api import OrchestratorApi
    from services.orchestrator.settings import OrchestratorSettings
    from shared import auth
    from shared.grpc_server import Server

    folder = tmp_path_factory.mktemp("console-auth")
    tokens = folder / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"token": "console-test-alice", "principal": "alice",
                                              "scopes": ["jobs"]}]}))
    previous = os.environ.get("GENSTACK_AUTH_TOKENS_FILE")
    os.environ["GENSTACK_AUTH_TOKENS_FILE"] = str(tokens)
    auth.get_auth_settings.cache_clear()
    try:
        core = OrchestratorCore(OrchestratorSettings(store="memory", recover=False))
        server = Server(OrchestratorApi(core), 0, host="127.0.0.1").start(warm_up_in_background=False)
    finally:
        if previous is None:
            os.environ.pop("GENSTACK_AUTH_TOKENS_FILE")
        else:
            os.environ["GENSTACK_AUTH_TOKENS_FILE"] = previous
        auth.get_auth_settings.cache_clear()
    env = {k: v for k, v in os.environ.items() if k not in ("GENSTACK_AUTH_TOKEN", "GENSTACK_AUTH_TOKENS_FILE")}
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "console", "--port", "0", "--host", "127.0.0.1",
                             "--orchestrator", f"127.0.0.1:{server.port}"], cwd=ROOT,
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    port = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and port is None:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("GENSTACK_LISTENING console"):
            port = int(line.split()[2])
    try:
        assert port, "the console did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        server.stop(0)
        core.close()


def test_with_authentication_on_the_console_asks_for_a_token_and_passes_it_on(guarded_console, page):
    import urllib.error

    from selenium.webdriver.common.by import By

    url = guarded_console
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/jobs", timeout=30)
    assert refused.value.code == 401  # the orchestrator said UNAUTHENTICATED; the console has no token
    request = urllib.request.Request(f"{url}/api/jobs", headers={"Authorization": "Bearer console-test-alice"})
    assert json.loads(urllib.request.urlopen(request, timeout=30).read())["jobs"] == []
    # the page asks for the token, keeps it for the tab and sends it with every call
    driver = page[0]
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    dialog = _wait(driver, lambda: (d := driver.find_element(By.ID, "token-dialog")).is_displayed() and d, 30,
                   "the token dialog")
    dialog.find_element(By.ID, "token-input").send_keys("console-test-alice")
    dialog.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    _wait(driver, lambda: not driver.find_element(By.ID, "token-dialog").is_displayed(), 20, "the dialog to close")
    _tab(driver, "generate")
    _fill(driver, {"prompt": "Say hi", "model": ANSWER_MODEL}, {"sampling": {"maxNewTokens": 4}})
    _wait(driver, lambda: "job.queued" in _event_types(driver), 60, "the job, submitted with the token")


def test_a_retried_job_lists_its_retries(page):
    """A two-token answer cannot pass the validator: the pipeline re-asks once with its feedback, and
    the page lists the retry with that feedback next to the timeline, where both attempts show."""
    from selenium.webdriver.common.by import By

    driver, url, collection = page
    driver.get(url)
    _tab(driver, "ask")
    _fill(driver, {"question": "When was the Eiffel Tower completed?", "collection": collection, "topK": 1,
                   "maxRetries": 1, "models": ANSWER_MODEL}, {"sampling": {"maxNewTokens": 2, "temperature": 0}})
    _wait(driver, lambda: {"job.succeeded", "job.failed"} & set(_event_types(driver)), 360, "the job's end")
    # greedy decoding: the two-token first attempt is the same every run (sampled, it may vary)
    assert "job.retry" in _event_types(driver), (_event_types(driver), driver.find_element(By.ID, "answer").text)
    retries = _wait(driver, lambda: [d.text for d in driver.find_elements(By.CSS_SELECTOR, "#retries div")
                                     if d.text.startswith("retry 1 from")], 30, "the retry line")
    assert len(retries[0]) > len("retry 1 from generate_answer: ")  # the validator's feedback is shown
    # read in one script call: the timeline is redrawn whenever the record is fetched again
    _wait(driver, lambda: "generate_answer #2" in _timeline(driver), 30, "both attempts on the timeline")
