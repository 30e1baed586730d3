"""The ownership runtime: the one loop of a worker that reads and acks streams.

Both session services (transcriber, conversation) run it with their own
:class:`shared.service.Service`. Its parts, one job each:

- ``reading``: which streams to read and when (doorbells as hints, sweeps);
- ``leases``: claim, refresh, reap (takeover) and hand back conversations;
- ``drain``: each conversation's entries, one at a time, in stream order;
- ``maintenance``: heartbeat, idle conversations, trimming, lag sampling,
  each on the one ``periodic`` helper;
- ``rebalance`` (pure), ``saturation`` (pure) and ``balancer``: live
  conversations moved between workers, between turns, to even out the load;
- ``worker``: ``OwnershipRuntime``, which wires them and owns start and shutdown.

Acks: a session writes its effect and the ack of its source entry together
through ``BatchWriter.gate``; entries that cannot be processed go to the
dead-letter stream with the same gate, so nothing is acked without a trace.
The protocol and why exactly-once holds: docs/architecture.md.
"""

from shared.runtime.worker import OwnershipRuntime

__all__ = ["OwnershipRuntime"]
