"""The benchmark: our pipeline against two hand-written baselines, side by side.

``python -m bench [--quick] [--out bench-results/NAME]`` starts its own Redis
(or uses ``REDIS_URL``), runs every phase and writes ``results.json``,
``results.md`` and PNG plots to the output folder.

Modules, one job each:

- :mod:`bench.sizes`: how big each phase runs (full, ``--quick``);
- :mod:`bench.phases`: the sections of a run, in order, and their figures;
- :mod:`bench.paired`: the paired section (ours and baseline_redis alternating);
- :mod:`bench.driver`: the load generator, the same for every system (closed
  loop with a bounded in-flight count; open loop on an evenly spread schedule);
- :mod:`bench.latency`: what is recorded per utterance, and the latency
  figures made of it;
- :mod:`bench.pipeline`: our services as the system under test (start them,
  write and read their streams);
- :mod:`bench.baseline_redis`: the hand-written two-hop redis-py pipeline;
- :mod:`bench.baseline_queues`: the same two hops on asyncio queues;
- :mod:`bench.cpu`: CPU seconds and RSS per process, Redis command counts;
- :mod:`bench.capacity`: live conversations held by one conversation worker;
- :mod:`bench.report`: a run's report (``python -m bench.report`` re-renders
  one), made of :mod:`bench.targets` (the issue's targets checked),
  :mod:`bench.tables` (the markdown), :mod:`bench.plots` (the PNGs) and
  :mod:`bench.performance_doc` (``docs/performance.md``), all reading the
  results through :mod:`bench.results`.
"""
