"""The gateway's Prometheus series (defined in shared/metrics.py, served on its own
port at ``/metrics``), bound to their label values once: the hot paths (every event
in and out) only add to a number.

Every label value is created here, so each series is exposed (at zero) from the start:
a query of a refusal reason never seen yet reads 0, not "no data"."""

from __future__ import annotations

from typing import Literal

from shared import metrics

SERVICE = "gateway"
RefusalReason = Literal["unauthorized", "not_found", "session_limit", "draining"]
PipelineOp = Literal["write", "read", "mark"]

SESSIONS_OPEN = metrics.GATEWAY_SESSIONS_OPEN.labels(SERVICE)
OPENED = {kind: metrics.GATEWAY_SESSIONS_OPENED.labels(SERVICE, kind) for kind in ("new", "resumed")}
REFUSED = {reason: metrics.GATEWAY_SESSIONS_REFUSED.labels(SERVICE, reason)
           for reason in ("unauthorized", "not_found", "session_limit", "draining")}
EVENTS_IN = metrics.GATEWAY_EVENTS.labels(SERVICE, "in")
EVENTS_OUT = metrics.GATEWAY_EVENTS.labels(SERVICE, "out")
PIPELINE_ERRORS = {op: metrics.GATEWAY_PIPELINE_ERRORS.labels(SERVICE, op) for op in ("write", "read", "mark")}


def refused(reason: RefusalReason) -> None:
    REFUSED[reason].inc()


def pipeline_error(op: PipelineOp) -> None:
    PIPELINE_ERRORS[op].inc()
