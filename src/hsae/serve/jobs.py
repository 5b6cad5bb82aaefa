"""One edit at a time: a FIFO of jobs and the one worker thread that runs them.

A request is validated before it is queued (a bad one never waits), then gets a job id at once.
`status` says where the job stands: queued with how many edits are ahead of it, running, done or
failed (with the error's message). `wait` blocks until that changes or a timeout passes, so a
page long-polls instead of polling fast; the last `keep` finished jobs stay readable.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hsae.serve.run import InputError


@dataclass
class Job:
    id: str
    payload: Any
    state: str = "queued"  # queued → running → done | failed
    result: Any = None
    error: str | None = None
    submitted: float = field(default_factory=time.monotonic)
    seconds: float | None = None


class JobQueue:
    def __init__(self, work: Callable[[Any], Any], keep: int = 64) -> None:
        self._work, self._keep = work, keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="hsae-serve-edits", daemon=True)
        self._thread.start()

    def submit(self, payload: Any) -> dict[str, Any]:
        with self._cond:
            if self._closed:
                raise InputError("the explorer is shutting down", 503)
            job = Job(f"{next(self._ids)}", payload)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify_all()
            return self._status(job)

    def job(self, job_id: str) -> Job:
        with self._cond:
            if job_id not in self._jobs:
                raise InputError(f"unknown edit job {job_id!r} (finished jobs are kept for the "
                                 f"last {self._keep} edits)", 404)  # fmt: skip
            return self._jobs[job_id]

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        with self._cond:
            return self._status(job)

    def wait(self, job_id: str, seen: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The job's status once its `key` differs from `seen`, or after `timeout` seconds."""
        job = self.job(job_id)
        deadline = time.monotonic() + max(0.0, min(timeout, 60.0))
        with self._cond:
            while True:
                st = self._status(job)
                left = deadline - time.monotonic()
                if st["key"] != seen or st["state"] in ("done", "failed") or left <= 0:
                    return st
                self._cond.wait(left)

    def _status(self, job: Job) -> dict[str, Any]:
        ahead = 0
        if job.state == "queued":
            ahead = next(i for i, j in enumerate(self._queue) if j is job)
            ahead += sum(1 for j in self._jobs.values() if j.state == "running")
        waiting = f"{ahead} edit{'s' if ahead != 1 else ''} ahead of yours" if ahead else "next"
        message = {
            "queued": f"waiting: {waiting} (one edit runs at a time)",
            "running": "editing: inverting and resuming the image…",
            "done": f"done in {job.seconds or 0:.2f} s",
            "failed": f"failed: {job.error}",
        }[job.state]
        return {"job": job.id, "state": job.state, "ahead": ahead, "message": message,
                "key": f"{job.state}:{ahead}"}  # fmt: skip

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                job = self._queue.popleft()
                job.state = "running"
                self._cond.notify_all()
            t0 = time.monotonic()
            try:
                result, error = self._work(job.payload), None
            except (InputError, ValueError, OSError, KeyError) as e:
                result, error = None, str(e)
            except Exception as e:  # the worker must survive any one edit
                traceback.print_exc(file=sys.stderr)
                result, error = None, f"internal error: {type(e).__name__}: {e}"
            with self._cond:
                job.result, job.error = result, error
                job.state = "failed" if error is not None else "done"
                job.seconds = time.monotonic() - t0
                self._forget_old()
                self._cond.notify_all()

    def _forget_old(self) -> None:
        done = [k for k, j in self._jobs.items() if j.state in ("done", "failed")]
        for k in done[: max(0, len(done) - self._keep)]:
            del self._jobs[k]

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
