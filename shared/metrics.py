"""Prometheus metrics of a worker process.

Label sets are bounded: service, stream *kind* (control/input/transcripts),
entry type, engine, error code. Never a conversation or utterance id.
The metric classes are :mod:`shared.fastmetrics` (lock-free, event-loop only).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shared.fastmetrics import Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 0.25 ms (a Redis hop) to 60 s (a slow LLM answer).
_LATENCY_BUCKETS_S = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

ENTRIES_READ = Counter(
    "vab_entries_read_total", "Stream entries read", ["service", "stream"], registry=REGISTRY
)
ENTRIES_HANDLED = Counter(
    "vab_entries_handled_total", "Stream entries handled (effect written or queued with its ack)",
    ["service", "stream", "type"], registry=REGISTRY,
)
ENTRIES_DEAD = Counter(
    "vab_entries_dead_lettered_total", "Entries sent to the dead-letter stream", ["service", "stream"],
    registry=REGISTRY,
)
DUPLICATES_SUPPRESSED = Counter(
    "vab_effects_suppressed_total", "Gated writes dropped because the source entry was already acked",
    ["service"], registry=REGISTRY,
)
SESSIONS_OWNED = Gauge("vab_sessions_owned", "Conversations this worker owns", ["service"], registry=REGISTRY)
SESSION_CAPACITY = Gauge("vab_session_capacity", "Session slots of this worker", ["service"], registry=REGISTRY)
TAKEOVERS = Counter("vab_takeovers_total", "Conversations taken over from a dead or leaving peer", ["service"],
                    registry=REGISTRY)
HANDBACKS = Counter("vab_handbacks_total", "Conversations handed back on shutdown", ["service"], registry=REGISTRY)
REBALANCED = Counter("vab_rebalanced_total", "Live conversations handed back, between turns, to balance the load",
                     ["service"], registry=REGISTRY)
SATURATED = Gauge("vab_saturated", "1 while this worker's queue delay says it is saturated", ["service"],
                  registry=REGISTRY)
LOST_CLAIMS = Counter("vab_claims_lost_total", "Conversations a peer took while this worker missed its lease",
                      ["service"], registry=REGISTRY)
RECLAIMED = Counter("vab_entries_reclaimed_total", "Entries left pending past STUCK_AFTER_S, claimed and handled again",
                    ["service"], registry=REGISTRY)
REDIS_ERRORS = Counter("vab_redis_errors_total", "Transient Redis errors (reads, writes)", ["service", "op"],
                       registry=REGISTRY)
REDIRECTS = Counter("vab_redis_redirects_total", "Redis Cluster redirections followed (MOVED: a slot's new "
                    "master; ASK: a slot being migrated)", ["kind"], registry=REGISTRY)
UNREPLICATED = Counter("vab_redis_wait_short_total", "WAITs (REDIS_WAIT_REPLICAS) that timed out short of "
                       "replicas: the node is then written to without WAIT for a few seconds", registry=REGISTRY)
UPSTREAM_RECONNECTS = Counter("vab_upstream_reconnects_total", "Upstream (engine) reconnects", ["engine"],
                              registry=REGISTRY)
UPSTREAM_ERRORS = Counter("vab_upstream_errors_total", "Upstream (engine) errors", ["engine", "code"],
                          registry=REGISTRY)
GROUP_LAG = Gauge("vab_group_lag_entries", "Entries not yet delivered to the group (sampled)",
                  ["service", "stream"], registry=REGISTRY)
GROUP_PENDING = Gauge("vab_group_pending_entries", "Entries delivered and not yet acked (sampled)",
                      ["service", "stream"], registry=REGISTRY)
QUEUE_TIME = Histogram(
    "vab_queue_time_seconds", "Stream entry id time to handled, per hop", ["service", "stream"],
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
UTTERANCE_TRANSCRIPT = Histogram(
    "vab_utterance_end_to_transcript_seconds", "End of speech to transcript final",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
UTTERANCE_FIRST_DELTA = Histogram(
    "vab_utterance_end_to_first_delta_seconds", "End of speech to first response delta",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
UTTERANCE_DONE = Histogram(
    "vab_utterance_end_to_done_seconds", "End of speech to response done",
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
ENGINE_TIME = Histogram(
    "vab_engine_seconds", "Engine time per input entry (ASR) or per answer (LLM)", ["engine", "kind"],
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
LLM_FIRST_TOKEN = Histogram(
    "vab_llm_first_token_seconds", "Request to first streamed delta", ["engine"],
    buckets=_LATENCY_BUCKETS_S, registry=REGISTRY,
)
_STALL_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
GC_PAUSE = Histogram(
    "vab_gc_pause_seconds", "Garbage-collector pauses, by generation", ["generation"],
    buckets=_STALL_BUCKETS_S, registry=REGISTRY,
)
LOOP_LAG = Histogram(
    "vab_event_loop_lag_seconds", "How late a 100 ms timer fired: the event loop was busy or stalled",
    buckets=_STALL_BUCKETS_S, registry=REGISTRY,
)
LLM_TOKENS_PER_S = Histogram(
    "vab_llm_deltas_per_second", "Streamed deltas per second of an answer (tokens for token-streaming engines)",
    ["engine"], buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 5000, 20000), registry=REGISTRY,
)


def stream_kind(key: str) -> str:
    """``vab:conv:{0}:abc:input`` -> ``input``; a control stream -> ``control``."""
    if ":conversations:" in key:
        return "control"
    return key.rsplit(":", 1)[-1]

# --- the gateway (gateway_svc/meters.py binds them; service="gateway", as the workers' series) ---
GATEWAY_SESSIONS_OPEN = Gauge("vab_gateway_sessions_open", "Realtime sockets open on this gateway", ["service"],
                              registry=REGISTRY)
GATEWAY_SESSIONS_OPENED = Counter("vab_gateway_sessions_opened_total", "Realtime sockets opened, new or resumed",
                                  ["service", "kind"], registry=REGISTRY)
GATEWAY_SESSIONS_REFUSED = Counter(
    "vab_gateway_sessions_refused_total",
    "Realtime handshakes refused: unauthorized, not_found (resume), session_limit, draining",
    ["service", "reason"], registry=REGISTRY,
)
GATEWAY_EVENTS = Counter("vab_gateway_events_total", "Realtime events: in (client), out (server, audio included)",
                         ["service", "direction"], registry=REGISTRY)
GATEWAY_PIPELINE_ERRORS = Counter(
    "vab_gateway_pipeline_errors_total",
    "Redis failures of the gateway: write (a client's event), read (the entry reader), mark (a delivery mark)",
    ["service", "op"], registry=REGISTRY,
)
