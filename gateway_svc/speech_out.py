"""Speak an answer sentence by sentence while its text streams in.

- :class:`SentenceSplitter` cuts the streamed text into sentences as soon as
  each is complete (pure), so the first one can be spoken while the model is
  still writing the rest;
- :func:`synthesize` speaks one sentence (espeak-ng via :mod:`shared.tts`, on
  a worker thread, never on the event loop);
- :func:`audio_delta_chunks` cuts the PCM into the base64 pieces of
  ``response.output_audio.delta`` events.

Exceptions: :func:`synthesize` raises :class:`shared.tts.TTSError` when
espeak-ng is missing or fails.
"""

from __future__ import annotations

import asyncio
import base64
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from shared import tts
from shared.audio import chunk_pcm
from shared.models import AUDIO_SAMPLE_RATE_HZ

#: A run of text with no sentence end is cut (at a word) once it is this long, so the audio of
#: a long unpunctuated answer starts after about one sentence's worth of text, not at its end.
MAX_SENTENCE_CHARS = 200
#: ... preferably after a comma, semicolon or colon, if there is one past this many characters.
_MIN_CLAUSE_CHARS = 60

#: A sentence end: terminators (and closing quotes or brackets) followed by white space, or a
#: line break. A terminator at the very end of the text waits for what follows: "3." may
#: become "3.5", and flush() takes the last sentence anyway.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)|\n")
#: A clause's end: where the first piece of an answer may be cut (see ``first_clause_words``).
_CLAUSE_END = re.compile(r"[,;:](?=\s)")
#: The word before a full stop, dots included ("e.g", "Dr", "3").
_WORD_BEFORE_DOT = re.compile(r"(\S+?)\.+[\"'”’)\]]*$")
#: Words whose full stop does not end a sentence, compared lower-cased without the final dot.
#: When one does end a sentence ("... and so on, etc."), the sentence is only joined to the next
#: one: a late split costs a little latency, a wrong one a broken intonation. "No." is left out:
#: an answer starts with it far more often than it abbreviates "number".
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "etc", "vs", "cf", "approx", "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt",
    "fig", "vol", "pp", "a.m", "p.m", "u.s", "u.k", "inc", "ltd", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})


class SentenceSplitter:
    """Turns a stream of text deltas into whole sentences.

    :meth:`feed` returns the sentences the text so far completes (stripped,
    never empty), :meth:`flush` the rest once the text is done. Fed the same
    text in any pieces, it returns the same sentences (a split depends on
    what follows a terminator, which it waits for).
    """

    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS, first_clause_words: int = 0) -> None:
        self.max_chars = max_chars
        #: > 0: the first piece may end at a clause (``, ; :``) once it has this many
        #: words, so the first audio of an answer does not wait for its first full stop.
        self.first_clause_words = first_clause_words
        self._pending = ""
        self._cut_before = False

    def feed(self, text_delta: str) -> list[str]:
        """Add ``text_delta``; return the sentences now complete, in order."""
        self._pending += text_delta
        sentences: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return sentences
            sentence, self._pending = self._pending[:cut].strip(), self._pending[cut:]
            if sentence:
                sentences.append(sentence)
                self._cut_before = True

    def flush(self) -> str:
        """The text not yet returned, stripped ("" if none); the splitter is empty afterwards."""
        rest, self._pending = self._pending.strip(), ""
        return rest

    def _next_cut(self) -> int | None:
        text = self._pending
        if self.first_clause_words and not self._cut_before:
            for match in _CLAUSE_END.finditer(text):
                if match.end() <= self.max_chars and len(text[: match.start()].split()) >= self.first_clause_words:
                    return match.end()
        for match in _SENTENCE_END.finditer(text):
            if match.end() > self.max_chars:
                break  # too long before any sentence end: cut at a word below
            if match.group() == "\n" or not _is_abbreviation(text[: match.end()]):
                return match.end()
        if len(text) <= self.max_chars:
            return None
        return _long_run_cut(text, self.max_chars)


def _is_abbreviation(text: str) -> bool:
    """True if ``text`` ends with a full stop that belongs to its word, not to the sentence."""
    if not text.rstrip("\"'”’)]").endswith("."):
        return False
    match = _WORD_BEFORE_DOT.search(text)
    if match is None:
        return False
    word = match.group(1).lstrip("\"'“‘([").lower()
    # A lone letter is an initial ("J. Smith"); a bare number at a line's start is a list item ("2. Mix").
    if len(word) == 1 and word.isalpha():
        return True
    if word.isdigit():
        line_start = text.rfind("\n", 0, match.start(1)) + 1
        return not text[line_start : match.start(1)].strip()
    return word in ABBREVIATIONS


def _long_run_cut(text: str, max_chars: int) -> int:
    """Where to cut a run longer than ``max_chars`` with no sentence end: after the last
    clause mark that leaves a reasonable piece, else at the last space, else hard."""
    window = text[: max_chars + 1]
    clauses = [m.end() for m in _CLAUSE_END.finditer(window) if m.end() >= _MIN_CLAUSE_CHARS]
    if clauses:
        return clauses[-1]
    space = window.rfind(" ")
    return space + 1 if space > 0 else max_chars


#: GA voice names -> espeak-ng voices. espeak has no such voices; these give each a
#: recognisably different (female or male) variant. Unknown names and None take the default.
VOICES: dict[str, str] = {
    "alloy": tts.DEFAULT_VOICE,
    "coral": "en-us+f2",
    "sage": "en-us+f4",
    "shimmer": "en-us+f5",
    "marin": tts.DEFAULT_VOICE,
    "ash": "en-us+m3",
    "ballad": "en-us+m2",
    "echo": "en-us+m1",
    "verse": "en-us+m4",
    "cedar": "en-us+m3",
}

# espeak-ng speaks one sentence at a time (shared.tts holds a lock around it): one thread is
# all it can use, and a dedicated one keeps queued sentences out of the default executor.
_executor: ThreadPoolExecutor | None = None


def espeak_voice(voice: str | None) -> str:
    """The espeak-ng voice for a GA voice name (the default for None or an unknown name)."""
    return VOICES.get(voice or "", tts.DEFAULT_VOICE)


async def synthesize(sentence: str, voice: str | None = None) -> bytes:
    """Speak ``sentence``; return PCM16 LE mono at 24 kHz (``b""`` for blank text).

    Runs on a worker thread. Cancelling the caller drops a sentence still
    waiting for the thread (one already being spoken finishes, unread).
    Raises :class:`shared.tts.TTSError`.
    """
    global _executor
    if not sentence.strip():
        return b""
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")
    loop = asyncio.get_running_loop()
    espeak = espeak_voice(voice)
    return await loop.run_in_executor(_executor, partial(tts.synthesize, sentence, voice=espeak))


def audio_delta_chunks(pcm: bytes, chunk_ms: int = 200) -> list[str]:
    """Base64 pieces of ``pcm`` (PCM16 LE mono 24 kHz), ``chunk_ms`` each (the last may be
    shorter), whole samples each, for ``response.output_audio.delta``. Raises ValueError on
    an odd byte count."""
    return [base64.b64encode(chunk).decode("ascii") for chunk in chunk_pcm(pcm, chunk_ms, AUDIO_SAMPLE_RATE_HZ)]
