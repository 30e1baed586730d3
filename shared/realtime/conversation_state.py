"""The state machine of one Realtime conversation session. Pure module: no
asyncio, no websockets.

One response at a time (turns queue), text accumulated per response,
``response.done`` mapped to :class:`Done` / :class:`Failed`, a turn whose
caller went away cancelled upstream (:meth:`ConversationState.cancel_active`,
ending in :class:`Settled`), and the history replayed into a fresh session.
Server events go in, :class:`Send` actions and results come out; the I/O edge
(the engine) performs them in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.history import Turn
from shared.realtime.client_events import (
    ConversationItemCreate,
    ResponseCancel,
    ResponseCreate,
    ResponseParams,
    SessionUpdate,
    assistant_text_item,
    user_text_item,
)
from shared.realtime.server_events import (
    ErrorEvent,
    ResponseCreated,
    ResponseDone,
    ResponseObject,
    ResponseOutputTextDelta,
    ServerEvent,
)
from shared.realtime.session_common import EventIds, Send
from shared.realtime.session_config import RealtimeSessionConfig


@dataclass(frozen=True, slots=True)
class TextOut:
    """A piece of the active response's text."""

    text: str


@dataclass(frozen=True, slots=True)
class Done:
    text: str
    usage: dict[str, int]


@dataclass(frozen=True, slots=True)
class Failed:
    """The active turn failed; ``code`` is the API's (``rate_limit_exceeded``, ...)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Settled:
    """A cancelled turn is over upstream: ``outcome`` is its response's final status
    (``cancelled``, or ``completed`` when the cancel raced the end), or the code of
    the error that ended it (``response_cancel_not_active``: no response was running).
    Nothing of the turn joined the history."""

    outcome: str


ConversationOutput = Send | TextOut | Done | Failed | Settled

#: The error a ``response.cancel`` gets when no response is active (it already ended).
CANCEL_NOT_ACTIVE = "response_cancel_not_active"


@dataclass
class _PendingTurn:
    user_text: str
    utterance_id: str
    item_event_id: str | None = None
    response_event_id: str | None = None
    response_id: str | None = None
    #: Set once the turn is being cancelled (the ``response.cancel`` sent for it).
    cancel_event_id: str | None = None
    parts: list[str] = field(default_factory=list)


class ConversationState:
    """Bookkeeping of one conversation session.

    ``submit`` a user turn: it starts at once (``conversation.item.create``
    then ``response.create``) when no response is active, else it queues.
    ``on_event`` turns server events into :class:`TextOut` / :class:`Done` /
    :class:`Failed` for the active turn, then starts the next queued one.
    ``cancel_active`` stops the active turn upstream; it stays active until its
    response is over (:class:`Settled`), as the API allows one response at a
    time, and joins no history. A completed turn joins the history, which :meth:`replay` turns into items
    for a fresh session (no ``response.create`` for replayed items).
    """

    def __init__(
        self,
        instructions: str | None,
        history: Iterable[Turn] = (),
        max_turns: int = 0,
        max_output_tokens: int | None = None,
    ) -> None:
        self.instructions = instructions
        self.max_output_tokens = max_output_tokens
        self.history: deque[Turn] = deque(history, maxlen=max_turns if max_turns > 0 else None)
        self.active: _PendingTurn | None = None
        self.queued: deque[_PendingTurn] = deque()
        self._event_ids = EventIds()
        self._local_turns = 0
        self.setup_event_id: str | None = None

    # --- session set-up

    def session_update(self) -> SessionUpdate:
        self.setup_event_id = self._event_ids.new("session")
        return SessionUpdate(
            event_id=self.setup_event_id,
            session=RealtimeSessionConfig(output_modalities=["text"], instructions=self.instructions),
        )

    def replay(self) -> list[ConversationItemCreate]:
        """Items that prime a fresh session with the history, oldest first."""
        items: list[ConversationItemCreate] = []
        for turn in self.history:
            items.append(user_text_item(turn.user_text, event_id=self._event_ids.new("replay")))
            if turn.assistant_text:
                items.append(assistant_text_item(turn.assistant_text, event_id=self._event_ids.new("replay")))
        return items

    def remember(self, turn: Turn) -> None:
        self.history.append(turn)

    def amend_last_answer(self, text: str) -> bool:
        """Keep only ``text`` of the newest turn's answer; False when there is none."""
        if not self.history:
            return False
        last = self.history[-1]
        self.history[-1] = Turn(last.utterance_id, last.user_text, text)
        return True

    # --- turns

    @property
    def busy(self) -> bool:
        return self.active is not None

    def submit(self, user_text: str, utterance_id: str | None = None) -> list[ConversationOutput]:
        """Queue a user turn; returns the events that start it when idle."""
        if utterance_id is None:
            self._local_turns += 1
            utterance_id = f"local-{self._local_turns}"
        self.queued.append(_PendingTurn(user_text, utterance_id))
        return self._start_next()

    def _start_next(self) -> list[ConversationOutput]:
        if self.active is not None or not self.queued:
            return []
        turn = self.active = self.queued.popleft()
        turn.item_event_id = self._event_ids.new("item")
        turn.response_event_id = self._event_ids.new("response")
        turn.response_id = None
        turn.cancel_event_id = None
        turn.parts.clear()
        params = ResponseParams(output_modalities=["text"], max_output_tokens=self.max_output_tokens)
        return [
            Send(user_text_item(turn.user_text, event_id=turn.item_event_id)),
            Send(ResponseCreate(event_id=turn.response_event_id, response=params)),
        ]

    def connection_lost(self) -> _PendingTurn | None:
        """The session is gone. Returns the turn that was mid-response (its
        partial text in ``parts``), which is no longer active; queued turns
        stay queued and start after the next ``submit`` or ``resume``."""
        turn, self.active = self.active, None
        return turn

    def resume(self, turn: _PendingTurn) -> list[ConversationOutput]:
        """Retry an interrupted turn first on a new session."""
        self.queued.appendleft(turn)
        return self._start_next()

    def cancel_active(self) -> list[ConversationOutput]:
        """The active turn's caller went away: a ``response.cancel`` for its
        response (any active one while its id is not known yet). The turn stays
        active until :class:`Settled`; none of it joins the history (the caller
        remembers what it kept). Nothing when no turn is active or it is
        already being cancelled."""
        turn = self.active
        if turn is None or turn.cancel_event_id is not None:
            return []
        turn.cancel_event_id = self._event_ids.new("cancel")
        return [Send(ResponseCancel(event_id=turn.cancel_event_id, response_id=turn.response_id))]

    def on_event(self, event: ServerEvent) -> list[ConversationOutput]:
        turn = self.active
        if turn is None:
            return []
        cancelling = turn.cancel_event_id is not None
        if isinstance(event, ResponseCreated):
            if turn.response_id is None:
                turn.response_id = event.response.id
            return []
        if isinstance(event, ResponseOutputTextDelta):
            if cancelling or turn.response_id not in (None, event.response_id) or not event.delta:
                return []
            turn.parts.append(event.delta)
            return [TextOut(event.delta)]
        if isinstance(event, ResponseDone):
            if turn.response_id not in (None, event.response.id):
                return []
            if cancelling:
                return self._settle(event.response.status)
            return [self._finish(turn, event.response), *self._start_next()]
        if not isinstance(event, ErrorEvent):
            return []
        cause, code = event.error.event_id, event.error.code or "invalid_request_error"
        if cancelling and cause == turn.cancel_event_id:
            # Any other refusal of the cancel: the response runs on, its done ends the turn.
            return self._settle(code) if code == CANCEL_NOT_ACTIVE else []
        if cause in (turn.item_event_id, turn.response_event_id):
            if cancelling:
                return self._settle(code)
            self.active = None
            return [Failed(code, event.error.message), *self._start_next()]
        return []

    def _settle(self, outcome: str) -> list[ConversationOutput]:
        self.active = None
        return [Settled(outcome), *self._start_next()]

    def _finish(self, turn: _PendingTurn, response: ResponseObject) -> Done | Failed:
        self.active = None
        if response.status == "completed":
            text = "".join(turn.parts)
            self.history.append(Turn(turn.utterance_id, turn.user_text, text))
            usage = {k: v for k, v in (response.usage or {}).items() if isinstance(v, int) and not isinstance(v, bool)}
            return Done(text, usage)
        return failure_of(response)


def failure_of(response: ResponseObject) -> Failed:
    """Map a response.done that is not ``completed`` to a reason.

    Rate limits and quota arrive here (status ``failed``, the reason in
    ``status_details.error``), not as ``error`` events."""
    details = response.status_details
    err = details.error if details else None
    reason = details.reason if details else None
    if response.status == "failed":
        code = (err.code if err else None) or "response_failed"
        message = (err.message if err else None) or reason or "the response failed"
    else:
        code = f"response_{response.status}"
        message = f"the response was {response.status}" + (f": {reason}" if reason else "")
    return Failed(code, message)
