"""What the image and video cores share: a diffusers pipeline chosen by configuration, loaded once
and offline, and one denoising run at a time.

A subclass names its media (`MEDIA`, which also names its settings prefix), its shipped model folder
and the make target that trains it, and may register its own pipeline classes or check the loaded
pipeline through the two hooks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.artifacts import ArtifactStore, get_store
from shared.config import Settings, get_settings
from shared.errors import Cancelled, InvalidArgument, Unavailable
from shared.progress import report
from shared.runtime import configure_torch

log = logging.getLogger(__name__)


class DiffusionCore:
    #: "image" or "video": names the settings (GENSTACK_<MEDIA>_*) and the messages
    MEDIA: str = ""
    #: the shipped default model (a standard diffusers folder), used when the setting `model` is "default"
    DEFAULT_MODEL_DIR: Path = Path()
    #: the make target that trains the default model
    TRAIN_TARGET: str = ""

    def __init__(self, settings: Any, base: Settings | None = None, store: ArtifactStore | None = None):
        self.settings = settings
        self.base = base or get_settings()
        self._store = store
        self._pipe = None
        self._load_lock = threading.Lock()
        # One denoising run at a time: a run already uses every core (or the whole GPU).
        self._run_lock = threading.Lock()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        self.pipeline()

    def close(self) -> None:
        self._closed = True
        self._pipe = None

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = get_store()
        return self._store

    @property
    def model_name(self) -> str:
        return self.settings.model

    def source(self) -> str:
        name = self.settings.model
        return str(self.DEFAULT_MODEL_DIR) if name == "default" else name

    def pipeline(self):
        if self._pipe is not None:
            return self._pipe
        with self._load_lock:
            if self._pipe is None:
                self._pipe = self._load()
        return self._pipe

    def _register_pipelines(self) -> None:
        """Import the service's own pipeline classes so that diffusers finds them by name."""

    def _check_pipeline(self, pipe) -> None:
        """Refuse a loaded pipeline the service cannot run (Unavailable naming why)."""

    def _load(self):
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        self._register_pipelines()
        diffusers_logging.disable_progress_bar()
        media, model = self.MEDIA, self.settings.model
        dtype = getattr(torch, self.settings.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidArgument("must be float32, bfloat16 or float16", field=f"GENSTACK_{media.upper()}_DTYPE")
        # The process-wide GENSTACK_TORCH_THREADS applies in-process too (the thread count can move a
        # pixel by one level, so a seed's pixels match another process only at the same count);
        # GENSTACK_<MEDIA>_TORCH_THREADS overrides it for this service.
        configure_torch()
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        source = self.source()
        if model == "default" and not (self.DEFAULT_MODEL_DIR / "model_index.json").exists():
            raise Unavailable(f"the default {media} model is missing at {self.DEFAULT_MODEL_DIR}; "
                              f"run `make {self.TRAIN_TARGET}`")
        log.info(f"loading {media} pipeline", extra={"fields": {"model": source, "device": self.settings.device}})
        report(f"loading the {media} model {model} …", model=model)
        try:
            pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise Unavailable(
                f"{media} model {model!r} cannot be loaded offline (not a diffusers folder nor a cached "
                f"Hugging Face id): {exc.__class__.__name__}: {str(exc)[:200]}"
            ) from None
        self._check_pipeline(pipe)
        pipe.to(self.settings.device)
        pipe.set_progress_bar_config(disable=True)
        log.info(f"{media} pipeline ready", extra={"fields": {"class": type(pipe).__name__}})
        return pipe

    # -- running ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive_run(self, stopped: Callable[[], bool], timings: dict[str, float], since: float) -> Iterator[None]:
        """Hold the one denoising slot: wait for it (a cancel or deadline ends the wait), record the
        wait as `queue` in `timings` (ms from `since`), refuse work once the service is closing."""
        while not self._run_lock.acquire(timeout=0.05):
            if stopped():
                raise Cancelled("cancelled while waiting for the model")
        try:
            timings["queue"] = (time.perf_counter() - since) * 1000
            if self._closed:
                raise Unavailable(f"the {self.MEDIA} service is shutting down")
            yield
        finally:
            self._run_lock.release()
