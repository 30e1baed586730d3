"""The chaos run: ``python -m bench.chaos`` sends utterances through 2
transcribers and 3 conversation workers (real processes, deterministic
engines, a short lease) on a Redis of its own with an append-only file, while
it SIGKILLs a random worker every few seconds (and starts a replacement),
SIGKILLs Redis once and starts it again on its port and data, and SIGSTOPs a
conversation worker past its lease once. Then it counts, from the streams,
what became of every utterance. See docs/reliability.md.

Modules, one job each:

- :mod:`bench.chaos.plan`: how big a run is, and when its faults strike (pure);
- :mod:`bench.chaos.pool`: the worker processes, killed and replaced;
- :mod:`bench.chaos.inject`: strikes the planned faults and records them;
- :mod:`bench.chaos.outcome`: what became of every utterance, read from the streams;
- :mod:`bench.chaos.events`: the workers' log lines, takeover times, a paused worker's writes (pure);
- :mod:`bench.chaos.report`: the figures, the verdict and the text printed (pure);
- :mod:`bench.chaos.run`: one run, end to end.
"""
