"""The seed example's direct simulation: an ``utterance.text`` entry's text is
its transcript. Audio is not understood by this engine: it is skipped with a
reason (use the ``local`` or ``openai`` engine for speech)."""

from __future__ import annotations

from shared.engines.base import InputEntry, TranscriptionEngine, TranscriptionSession, TranscriptSink
from shared.models import UtteranceText


class _Session(TranscriptionSession):
    def __init__(self, sink: TranscriptSink) -> None:
        self.sink = sink

    async def feed(self, entry_id: str, entry: InputEntry) -> None:
        if isinstance(entry, UtteranceText):
            self.sink.final(entry.utterance_id, entry.text, entry.sent_ms, [entry_id])
        else:
            self.sink.skip([entry_id], "the simulated engine does not transcribe audio")

    async def flush(self) -> None:
        return None


class SimulatedTranscription(TranscriptionEngine):
    name = "simulated"

    async def open_session(self, conversation_id: str, sink: TranscriptSink) -> TranscriptionSession:
        return _Session(sink)
