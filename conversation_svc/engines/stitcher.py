"""Stitching the deltas of a retried turn. Pure module.

The worker numbers deltas within its one response, so a turn restarted after a
dropped connection must not repeat text. The new response's text is held back
until it runs past what was already yielded; when it starts with the streamed
text (same answer) only the continuation is yielded; when it diverges, a
newline and the new answer from its start are yielded (the client sees the
restart; the engine's own history keeps only the new answer).
"""

from __future__ import annotations


class Stitcher:
    """Turns the deltas of one turn's responses (the first, and a retry after
    a drop) into what the caller sees, without repeating streamed text."""

    def __init__(self) -> None:
        self.streamed = ""  # what the caller already has
        self.fresh = ""  # the current response's text
        self.following = True  # False while a retry is still re-saying streamed text

    def restart(self) -> None:
        self.fresh = ""
        self.following = not self.streamed

    def piece(self, delta: str) -> str:
        self.fresh += delta
        if self.following:
            out = delta
        elif len(self.fresh) <= len(self.streamed) and self.streamed.startswith(self.fresh):
            return ""  # still repeating what the caller has
        elif self.fresh.startswith(self.streamed):
            out = self.fresh[len(self.streamed):]
            self.following = True
        else:
            # Diverged: restart visibly, then follow the new answer.
            out = "\n" + self.fresh
            self.following = True
        self.streamed += out
        return out
