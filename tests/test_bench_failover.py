"""bench.failover's counting: the utterance ids a simulator run sent, what the
surviving streams lost of them, and the rows of its table."""

from __future__ import annotations

from typing import Any

from bench.failover_count import count_streams, render, row, run_ids, sent_utterances


def test_run_ids_come_from_simulator_conversation_keys_only() -> None:
    names = ["fo1:conv:{3.4}:sim-a1b2c3-0007:input", "fo1:conv:{0}:sim-a1b2c3-0000:responses",
             "fo1:conv:{0}:other-conversation:input", "fo1:conversations:{0}"]
    assert run_ids(names) == {"a1b2c3"}


def test_sent_utterances_are_every_conversation_times_every_index() -> None:
    sent = sent_utterances("abc", conversations=2, utterances=3)
    assert len(sent) == 6
    assert ("sim-abc-0001", "u0002") in sent and ("sim-abc-0002", "u0000") not in sent


def test_count_streams_tells_lost_inputs_unanswered_and_duplicate_dones_apart() -> None:
    sent = sent_utterances("abc", conversations=1, utterances=4)
    c = "sim-abc-0000"
    kept = [(c, "u0000"), (c, "u0000"), (c, "u0001"), (c, "u0002")]  # u0003 gone; u0000 written twice
    dones = [(c, "u0000"), (c, "u0001"), (c, "u0001"), (c, "u0001"), (c, "u0003"), ("sim-abc-0009", "u0000")]
    count = count_streams(sent, kept, dones)
    assert count.as_dict() == {"sent": 4, "lost_by_redis": 1, "kept_unanswered": 1, "duplicate_dones": 2,
                               "unknown_dones": 1}


def _trial(failover_s: float, p99: float | None, lost: int, lag: int) -> dict[str, Any]:
    return {"simulator": {"utterances": 10, "responses_done": 9, "responses_failed": 0, "missing": 1,
                          "duplicates": 1, "out_of_order": 0, "latency_ms": {"response_done": {"p99": p99}}},
            "streams": {"lost_by_redis": lost, "duplicate_dones": 0},
            "failover_s": failover_s, "lag": {"max_bytes": lag, "before_kill_bytes": lag // 2}}


def test_row_sums_counts_and_keeps_the_worst_tail_and_lag() -> None:
    r = row(0, [_trial(2.5, 900.0, 1, 100), _trial(1.5, None, 0, 40), _trial(3.0, 1200.0, 2, 0)])
    assert (r["trials"], r["utterances"], r["answered"], r["missing"], r["duplicates_seen"]) == (3, 30, 27, 3, 3)
    assert r["lost_by_redis"] == 3
    assert r["done_p99_ms_worst"] == 1200.0
    assert (r["failover_s_p50"], r["failover_s_max"]) == (2.5, 3.0)
    assert (r["replication_lag_max_bytes"], r["replication_lag_before_kill_max_bytes"]) == (100, 50)
    table = render({"load": {"conversations": 1, "utterances": 10, "rate": 2.0, "kill_after_s": 5.0},
                    "commit": "0123456789abcdef", "rows": [r]})
    header, rule, line = table.splitlines()[-3:]
    assert header.count("|") == rule.count("|") == line.count("|")
    assert line.startswith("| 0 | 3 | 30 | 27 | 3 | 3 | 3 | 0 | 0 | 1200.00 | 2.50 / 3.00 | 100 (50) |")
