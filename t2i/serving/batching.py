"""Sharing the model among concurrent requests: the generations that arrive while it is busy run as one batch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class _Job:
    prompt: str
    num_images: int
    seed: int
    done: threading.Event = field(default_factory=threading.Event)
    images: list[Image.Image] | None = None
    error: BaseException | None = None


class _Batcher:
    """Runs the generations that arrive while the model is busy as one forward pass (leader/follower batching).

    The first waiting thread to get the model runs every pending job, its own included; the others find their
    images ready. A request that finds the model idle runs at once, so batching never adds waiting time.
    Gradio's own batching cannot be used: a ``gr.Error`` for one bad request would fail its whole batch, and
    Gradio 6's ``validator`` (which would reject bad requests before batching) does not work with batched events.
    """

    def __init__(self, run: Callable[[list[_Job]], None], max_images: int):
        self._run, self._max_images = run, max_images
        self._pending: list[_Job] = []
        self._pending_lock, self._model_lock = threading.Lock(), threading.Lock()

    def __call__(self, job: _Job) -> list[Image.Image]:
        with self._pending_lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self._model_lock:
                if job.done.is_set():
                    break
                batch = self._take()
                try:
                    self._run(batch)
                except BaseException as error:  # a failed forward pass fails its jobs, not the waiting threads
                    for other in batch:
                        other.error = error
                finally:
                    for other in batch:
                        other.done.set()
        if job.error is not None:
            raise job.error
        return job.images

    def _take(self) -> list[_Job]:
        with self._pending_lock:
            count, total = 0, 0
            for job in self._pending:
                if count and total + job.num_images > self._max_images:
                    break
                count, total = count + 1, total + job.num_images
            batch, self._pending = self._pending[:count], self._pending[count:]
        return batch
