"""Word error rate: how far a transcript is from what was said. Pure module.

Both texts are normalised first (lower case; punctuation other than an
apostrophe or hyphen inside a word becomes a space; hyphens split words), then
compared word by word with the Levenshtein distance (substitutions, deletions
and insertions each cost 1). Numbers are not spelled out: "2" and "two" differ.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def normalize_words(text: str) -> list[str]:
    """Lower-case words of ``text``, punctuation dropped (``"I'd"`` stays one word)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """``(edits, reference_words)``: the word-level edit distance and the reference length."""
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_word != hyp_word),  # substitution or match
            )
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Edits divided by the number of reference words (can exceed 1.0 with insertions).

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    edits, n_ref = word_errors(reference, hypothesis)
    if n_ref == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / n_ref
