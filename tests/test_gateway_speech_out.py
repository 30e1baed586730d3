"""Speech out of the gateway (gateway_svc/speech_out.py): sentence splitting of
streamed text (pure), synthesis of a sentence, and the base64 audio deltas."""

from __future__ import annotations

import base64

import pytest

from gateway_svc.speech_out import (
    MAX_SENTENCE_CHARS,
    VOICES,
    SentenceSplitter,
    audio_delta_chunks,
    espeak_voice,
    synthesize,
)
from shared.audio import pcm16_to_float32, pcm_duration_ms, rms_dbfs, silence_pcm
from shared.models import AUDIO_SAMPLE_RATE_HZ
from shared.tts import DEFAULT_VOICE

# --- sentence splitting ---------------------------------------------------------------------------


def split(text: str, piece_chars: int) -> tuple[list[str], str]:
    """Feed ``text`` in pieces of ``piece_chars``; the sentences returned on the way, and flush()."""
    splitter = SentenceSplitter()
    sentences: list[str] = []
    for i in range(0, len(text), piece_chars):
        sentences.extend(splitter.feed(text[i : i + piece_chars]))
    return sentences, splitter.flush()


@pytest.mark.parametrize(
    ("text", "sentences", "rest"),
    [
        ("Hello there. How are you? I am fine!", ["Hello there.", "How are you?"], "I am fine!"),
        ("Wait... what?! Really.", ["Wait...", "what?!"], "Really."),
        ("Use a tool, e.g. a hammer. Or i.e. not. Then stop.", ["Use a tool, e.g. a hammer.", "Or i.e. not."],
         "Then stop."),
        ("Dr. Smith met Mr. J. Jones at 5 p.m. today. Done.", ["Dr. Smith met Mr. J. Jones at 5 p.m. today."],
         "Done."),
        ("It costs 3.5 dollars, or 2.75 euros. Version 2. Next", ["It costs 3.5 dollars, or 2.75 euros.",
                                                                   "Version 2."], "Next"),
        ('He said "stop." Then he left. (Quietly.) End', ['He said "stop."', "Then he left.", "(Quietly.)"], "End"),
        ("First line\nSecond line\n\n  Third", ["First line", "Second line"], "Third"),
        ("Steps:\n1. Preheat the oven.\n2. Mix it.\n", ["Steps:", "1. Preheat the oven.", "2. Mix it."], ""),
        ("No. I cannot.", ["No."], "I cannot."),
        ("", [], ""),
        ("   \n\n  ", [], ""),
    ],
)
def test_splitter_cases(text: str, sentences: list[str], rest: str) -> None:
    assert split(text, len(text) or 1) == (sentences, rest)


@pytest.mark.parametrize("piece_chars", [1, 2, 3, 5, 7, 13])
def test_splitter_gives_the_same_sentences_however_the_text_is_cut(piece_chars: int) -> None:
    text = ("Sure. The answer is 3.14, e.g. pi. Dr. Who? Yes!\nA list:\n1. One.\n2. Two. "
            + "and then a long run " * 20 + "that ends here.")
    assert split(text, piece_chars) == split(text, len(text))


def test_a_sentence_end_at_the_end_of_the_text_waits_for_what_follows() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It is 3.") == []  # could still become 3.5
    assert splitter.feed("5 degrees.") == []
    assert splitter.feed(" Cold") == ["It is 3.5 degrees."]
    assert splitter.flush() == "Cold"
    assert splitter.flush() == ""


def test_a_long_run_without_punctuation_is_cut_at_words() -> None:
    words = [f"word{i}" for i in range(120)]  # about 800 characters, no sentence end
    text = " ".join(words)
    splitter = SentenceSplitter()
    pieces: list[str] = []
    for i in range(0, len(text), 10):
        pieces.extend(splitter.feed(text[i : i + 10]))
    assert len(pieces) >= 3  # spoken long before the end of the text
    assert all(0 < len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    pieces.append(splitter.flush())
    assert " ".join(pieces).split() == words  # no word split or lost


def test_a_long_run_is_cut_after_a_clause_when_it_can() -> None:
    text = "a" * 30 + " " + "b " * 40 + "then a comma, " + "c " * 60 + "and more"
    [first] = SentenceSplitter().feed(text)[:1]
    assert first.endswith("then a comma,")


def test_a_long_word_with_no_space_is_cut_hard() -> None:
    pieces = SentenceSplitter().feed("x" * 450)
    assert pieces == ["x" * MAX_SENTENCE_CHARS] * 2


# --- synthesis ------------------------------------------------------------------------------------


async def test_synthesize_gives_pcm16_of_a_plausible_duration() -> None:
    pcm = await synthesize("Hello there, how are you doing today?")
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    assert 1200 < pcm_duration_ms(pcm, AUDIO_SAMPLE_RATE_HZ) < 5000  # about 2 s at 175 words per minute
    assert rms_dbfs(pcm16_to_float32(pcm)) > -35.0  # speech, not silence
    assert await synthesize("  ") == b""


async def test_every_ga_voice_speaks_and_unknown_ones_take_the_default() -> None:
    assert set(VOICES) == {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
    for espeak in sorted(set(VOICES.values())):  # each variant exists in the bundled espeak-ng data
        assert await synthesize("Hi.", voice=next(k for k, v in VOICES.items() if v == espeak))
    assert espeak_voice(None) == espeak_voice("nobody") == DEFAULT_VOICE
    assert len(await synthesize("Hi.", voice="nobody")) > 0


# --- audio deltas -----------------------------------------------------------------------------------


def test_audio_delta_chunks_decode_back_to_the_input() -> None:
    pcm = bytes(range(256)) * 100 + silence_pcm(450, AUDIO_SAMPLE_RATE_HZ)  # 25 600 + 21 600 bytes
    chunks = audio_delta_chunks(pcm)
    decoded = [base64.b64decode(c) for c in chunks]
    assert b"".join(decoded) == pcm
    assert [len(d) for d in decoded[:-1]] == [9600] * (len(decoded) - 1)  # 200 ms of 24 kHz PCM16
    assert 0 < len(decoded[-1]) <= 9600 and len(decoded[-1]) % 2 == 0
    assert [len(base64.b64decode(c)) for c in audio_delta_chunks(pcm, chunk_ms=50)][0] == 2400
    assert audio_delta_chunks(b"") == []
    with pytest.raises(ValueError):
        audio_delta_chunks(b"\x00\x01\x02")


def test_the_first_piece_may_end_at_a_clause_so_audio_starts_sooner() -> None:
    splitter = SentenceSplitter(first_clause_words=4)
    assert splitter.feed("Sure, ") == []  # too short a clause to speak alone
    assert splitter.feed("the weather today is sunny, ") == ["Sure, the weather today is sunny,"]
    # Only the first piece: later ones wait for their sentence's end.
    assert splitter.feed("with a light breeze from the west, ") == []
    assert splitter.feed("and warm. Enjoy") == ["with a light breeze from the west, and warm."]
    assert splitter.flush() == "Enjoy"
    assert SentenceSplitter().feed("Sure, the weather today is sunny, ") == []
