"""How big a chaos run is, and when its faults strike. Pure: the schedule is a
function of the configuration and the seed, so a run can be repeated."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["kill", "redis", "stop"]


@dataclass(frozen=True)
class ChaosConfig:
    utterances: int = 10_000
    conversations: int = 200
    #: Utterances per second over all conversations (each conversation gets rate / conversations).
    rate: float = 50.0
    seed: int = 1
    transcribers: int = 2
    conversation_workers: int = 3
    #: Short, so that takeovers are quick (the default is 10 s).
    lease_s: float = 2.0
    #: Entries left pending (a zombie's read after a cut) are handled again after this long.
    stuck_after_s: float = 5.0
    #: A worker is SIGKILLed every uniform(*kill_every_s) seconds.
    kill_every_s: tuple[float, float] = (4.0, 8.0)
    #: No kill before this: the workers first adopt the conversations.
    first_kill_after_s: float = 2.0
    #: Redis stays dead this long before it is started again.
    redis_down_s: float = 1.0
    #: Where in the sending time Redis is killed, and the worker paused (fractions).
    redis_window: tuple[float, float] = (0.25, 0.35)
    stop_window: tuple[float, float] = (0.6, 0.7)
    #: After the last utterance is sent: how long to wait for every answer, at most.
    settle_timeout_s: float = 60.0

    @property
    def per_conversation(self) -> int:
        return max(1, round(self.utterances / self.conversations))

    @property
    def total_utterances(self) -> int:
        """What is sent: ``utterances`` rounded to whole conversations."""
        return self.per_conversation * self.conversations

    @property
    def send_s(self) -> float:
        return self.total_utterances / self.rate

    @property
    def stop_hold_s(self) -> float:
        """The least a paused worker stays paused: past its lease, so peers take its conversations."""
        return 2.5 * self.lease_s

    @property
    def redis_guard(self) -> tuple[float, float]:
        """No worker is killed this long before and after Redis is killed: the takeover
        times measured from a kill would otherwise include Redis's outage."""
        return (self.lease_s, self.redis_down_s + self.lease_s)

    @property
    def stop_guard(self) -> tuple[float, float]:
        """Likewise around the pause: its takeovers are measured apart."""
        return (self.lease_s, self.stop_hold_s + self.lease_s)


QUICK = ChaosConfig(utterances=600, conversations=40, rate=15.0, kill_every_s=(3.0, 5.0), settle_timeout_s=45.0)


@dataclass(frozen=True)
class PlannedFault:
    #: Seconds after the first utterance was sent.
    at_s: float
    kind: FaultKind


def plan_faults(config: ChaosConfig) -> list[PlannedFault]:
    """The faults of one run, in time order: Redis killed once, one conversation worker
    paused once, and a worker killed every few seconds outside the guard windows of
    those two (each fault's effects are measured alone). Every fault falls within the
    sending time."""
    rng = random.Random(config.seed)
    duration = config.send_s
    redis_at = rng.uniform(*config.redis_window) * duration
    stop_at = rng.uniform(*config.stop_window) * duration
    guards = [
        (redis_at - config.redis_guard[0], redis_at + config.redis_guard[1]),
        (stop_at - config.stop_guard[0], stop_at + config.stop_guard[1]),
    ]
    faults = [PlannedFault(redis_at, "redis"), PlannedFault(stop_at, "stop")]
    t = config.first_kill_after_s + rng.uniform(0, config.kill_every_s[0])
    while t < duration:
        if not any(lo <= t <= hi for lo, hi in guards):
            faults.append(PlannedFault(round(t, 3), "kill"))
        t += rng.uniform(*config.kill_every_s)
    return sorted(faults, key=lambda f: f.at_s)
