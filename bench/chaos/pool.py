"""The chaos run's workers: real processes (``shared.devstack.Stack``), each with
a worker id of its own, killed and replaced so the pool keeps its size. Every
process ever started is kept, dead or alive: its log is read at the end."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from bench.chaos.events import LogEvent, parse_log
from shared.devstack import ServiceProcess, Stack

#: Service name (as in the logs, the heartbeats and the consumer groups) -> module.
MODULES = {"transcriber": "transcriber_svc", "conversation": "conversation_svc"}


@dataclass
class Worker:
    service: str
    worker_id: str
    proc: ServiceProcess
    killed: bool = False
    paused: bool = False

    def events(self) -> list[LogEvent]:
        return parse_log(self.proc.log_text())


class WorkerPool:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.workers: list[Worker] = []

    def start(self, service: str) -> Worker:
        # A fresh id per process: a replacement must never reuse a dead worker's consumer name.
        worker_id = f"chaos-{service}-{len(self.workers)}"
        proc = self.stack.start(MODULES[service], {"WORKER_ID": worker_id})
        worker = Worker(service, worker_id, proc)
        self.workers.append(worker)
        return worker

    def alive(self, service: str | None = None) -> list[Worker]:
        return [w for w in self.workers if not w.killed and w.proc.alive() and service in (None, w.service)]

    def kill(self, worker: Worker) -> Worker:
        """SIGKILL (no hand-back, no last write), then a replacement of the same service."""
        worker.proc.signal(signal.SIGKILL)
        worker.proc.wait(10)
        worker.killed = True
        return self.start(worker.service)

    def pause(self, worker: Worker) -> None:
        worker.proc.signal(signal.SIGSTOP)
        worker.paused = True

    def resume(self, worker: Worker) -> None:
        worker.proc.signal(signal.SIGCONT)
        worker.paused = False

    def events(self) -> list[LogEvent]:
        return [e for w in self.workers for e in w.events()]

    def stop(self) -> None:
        for w in self.workers:
            if w.paused:
                self.resume(w)  # a stopped process would not hear its SIGTERM
        self.stack.stop_all()
