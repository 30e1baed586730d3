"""The gateway's browser page in a real Chromium, against a scripted Realtime server.

The scripted server serves ``gateway_svc/static`` the way the gateway does
(``/`` -> index.html, ``/static/<file>``), mints ephemeral keys, and on
``/v1/realtime`` records what the page sends and, once the page's fake
microphone has delivered speech, plays a fixed GA-shaped exchange. The page
must show it: the user's transcript, the answer, its status, errors; play the
answer's audio and cut it on barge-in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from shared.audio import float32_to_pcm16, pcm16_to_float32, rms_dbfs
from shared.tasks import cancel_and_wait
from tests.browser import (
    OpenPage,
    chromium,
    converse,
    open_page,
    start_page,
    wav_duration_ms,
    write_speech_wav,
)

# One browser for the module (its fake microphone plays one file); a fresh page per test.
pytestmark = pytest.mark.asyncio(loop_scope="module")

STATIC_DIR = Path(__file__).resolve().parents[1] / "gateway_svc" / "static"
SCREENSHOT_ENV = "GATEWAY_PAGE_SCREENSHOT"  # e.g. docs/gateway-page.png, to refresh the README's picture

API_KEY = "sk-page-test"
MINTED_KEY = "ek_scripted_0123456789"
#: A 100 ms piece at 24 kHz PCM16: what the page's worklet posts.
PIECE_MS = 100
PIECE_BYTES = 24 * PIECE_MS * 2
#: A piece louder than this holds speech (espeak-ng talks at about -20 dBFS; the
#: fake WAV's silence is digital zero).
SPEECH_DBFS = -35.0
#: Speech after this many quiet pieces is a new onset (espeak-ng's gaps between words are shorter).
QUIET_PIECES_BEFORE_ONSET = 3

EXPECTED_SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "local"},
                "turn_detection": {"type": "server_vad"},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}},
        },
    },
}

USER_ITEM = "item_user_1"
RESPONSE_ID = "resp_scripted_1"
ANSWER_ITEM = "item_answer_1"
USER_TEXT = "What is the weather like?"
ANSWER_TEXT = "It is sunny and warm."


def _tone_base64(duration_ms: int) -> str:
    """A quiet 440 Hz tone as base64 PCM16 24 kHz: the answer's audio, long enough to still
    be playing when the test barges in."""
    t = np.arange(24 * duration_ms) / 24_000
    return base64.b64encode(float32_to_pcm16(0.05 * np.sin(2 * np.pi * 440 * t))).decode()


def conversation_script() -> list[dict[str, Any]]:
    """The server's side of one exchange, as a GA server sends it after hearing speech."""
    answer = {"response_id": RESPONSE_ID, "item_id": ANSWER_ITEM, "output_index": 0, "content_index": 0}
    audio = [{"type": "response.output_audio.delta", **answer, "delta": _tone_base64(2_000)} for _ in range(5)]
    return [
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": USER_ITEM},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 3000, "item_id": USER_ITEM},
        {"type": "input_audio_buffer.committed", "item_id": USER_ITEM, "previous_item_id": None},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": USER_ITEM,
         "content_index": 0, "delta": "What is the "},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": USER_ITEM,
         "content_index": 0, "delta": "weather like?"},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": USER_ITEM,
         "content_index": 0, "transcript": USER_TEXT},
        {"type": "response.created", "response": {"id": RESPONSE_ID, "status": "in_progress", "output": []}},
        {"type": "response.output_audio_transcript.delta", **answer, "delta": "It is sunny"},
        *audio,
        {"type": "response.output_audio_transcript.delta", **answer, "delta": " and warm."},
        {"type": "response.output_audio.done", **answer},
        {"type": "response.output_audio_transcript.done", **answer, "transcript": ANSWER_TEXT},
        {"type": "rate_limits.updated", "rate_limits": []},  # not shown: must be tolerated
        {"type": "response.done", "response": {"id": RESPONSE_ID, "status": "completed", "output": [],
                                               "status_details": None, "usage": {"total_tokens": 12}}},
        {"type": "error", "error": {"type": "invalid_request_error", "code": "scripted_error",
                                    "message": "a scripted error", "param": None, "event_id": None}},
    ]


@dataclass
class ScriptedRealtimeServer:
    """Serves the page and one scripted Realtime exchange; records what the page sends."""

    mint_status: int = 200
    mint_requests: list[tuple[str | None, Any]] = field(default_factory=list)
    offered_protocols: list[list[str]] = field(default_factory=list)
    selected_protocols: list[str | None] = field(default_factory=list)
    client_events: list[dict[str, Any]] = field(default_factory=list)
    heard_speech: asyncio.Event = field(default_factory=asyncio.Event)
    #: Indexes of the appended pieces where speech begins after a pause: Chromium loops the
    #: fake microphone's file, so the distance between two onsets is the file's length.
    speech_onsets: list[int] = field(default_factory=list)
    heard_speech_twice: asyncio.Event = field(default_factory=asyncio.Event)
    quiet_pieces: int = 0
    pieces_received: int = 0
    barge_in: asyncio.Event = field(default_factory=asyncio.Event)
    sockets: set[web.WebSocketResponse] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application()
        app.on_shutdown.append(self.close_sockets)
        app.router.add_get("/", self.index)
        app.router.add_static("/static", STATIC_DIR)
        app.router.add_post("/v1/realtime/client_secrets", self.mint)
        app.router.add_get("/v1/realtime", self.realtime)
        return app

    async def close_sockets(self, app: web.Application) -> None:
        # The page outlives the server in a test: close its socket, or shutdown waits for it.
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"server shutting down")

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def mint(self, request: web.Request) -> web.Response:
        self.mint_requests.append((request.headers.get("Authorization"), await request.json()))
        if self.mint_status != 200:
            error = {"type": "invalid_request_error", "code": "invalid_api_key", "message": "scripted refusal"}
            return web.json_response({"error": error}, status=self.mint_status)
        return web.json_response({"value": MINTED_KEY, "expires_at": 1_900_000_000})

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        self.offered_protocols.append([p.strip() for p in offered.split(",") if p.strip()])
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        self.sockets.add(ws)
        self.selected_protocols.append(ws.ws_protocol)
        created = {"type": "realtime", "id": "sess_scripted", "model": "local", "conversation_id": "conv_scripted"}
        await ws.send_json({"type": "session.created", "event_id": "evt_0", "session": created})
        script = asyncio.create_task(self.play(ws))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self.record(json.loads(message.data))
        finally:
            self.sockets.discard(ws)
            await cancel_and_wait(script)
        return ws

    def record(self, event: dict[str, Any]) -> None:
        self.client_events.append(event)
        if event.get("type") != "input_audio_buffer.append":
            return
        self.pieces_received += 1
        samples = pcm16_to_float32(base64.b64decode(event["audio"], validate=True))
        if rms_dbfs(samples) <= SPEECH_DBFS:
            self.quiet_pieces += 1
            return
        if self.quiet_pieces >= QUIET_PIECES_BEFORE_ONSET:
            self.speech_onsets.append(self.pieces_received - 1)
        self.quiet_pieces = 0
        self.heard_speech.set()
        if len(self.speech_onsets) >= 2:
            self.heard_speech_twice.set()

    async def play(self, ws: web.WebSocketResponse) -> None:
        await self.heard_speech.wait()
        for number, event in enumerate(conversation_script(), start=1):
            await ws.send_json({"event_id": f"evt_{number}", **event})
        await self.barge_in.wait()
        answer = {"response_id": RESPONSE_ID, "item_id": ANSWER_ITEM, "output_index": 0, "content_index": 0}
        for number, event in enumerate([
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 9000, "item_id": "item_user_2"},
            # Audio of the cut answer that was already on its way: the page must not play it.
            {"type": "response.output_audio.delta", **answer, "delta": _tone_base64(500)},
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 9500, "item_id": "item_user_2"},
        ], start=100):
            await ws.send_json({"event_id": f"evt_{number}", **event})

    def appended_pieces(self) -> list[bytes]:
        return [base64.b64decode(e["audio"], validate=True) for e in self.client_events
                if e.get("type") == "input_audio_buffer.append"]


@contextlib.asynccontextmanager
async def serving(server: ScriptedRealtimeServer) -> AsyncIterator[str]:
    """Run ``server`` on a free loopback port; yield its base URL."""
    test_server = TestServer(server.app(), host="127.0.0.1")
    await test_server.start_server()
    try:
        yield str(test_server.make_url("/"))
    finally:
        await test_server.close()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_speech_wav(tmp_path_factory.mktemp("mic") / "mic.wav", USER_TEXT)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(speech_wav: Path) -> AsyncIterator[Browser]:
    async with chromium(speech_wav) as launched:
        yield launched


@pytest_asyncio.fixture(loop_scope="module")
async def opened(browser: Browser) -> AsyncIterator[OpenPage]:
    async with open_page(browser) as fresh:
        yield fresh


async def test_page_streams_the_microphone_and_shows_the_exchange(
    opened: OpenPage, speech_wav: Path, tmp_path: Path
) -> None:
    server = ScriptedRealtimeServer()
    async with serving(server) as base_url:
        page = opened.page
        seen = await converse(page, base_url, API_KEY)

        # The API key was exchanged for an ephemeral one, which the socket offered.
        assert server.mint_requests == [(
            f"Bearer {API_KEY}",
            {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {"type": "realtime"}},
        )]
        assert server.offered_protocols == [["realtime", f"openai-insecure-api-key.{MINTED_KEY}"]]
        assert server.selected_protocols == ["realtime"]

        # session.update first, then only audio: 100 ms pieces of valid PCM16, some of it speech.
        assert server.client_events[0] == EXPECTED_SESSION_UPDATE
        assert {e["type"] for e in server.client_events[1:]} == {"input_audio_buffer.append"}
        pieces = server.appended_pieces()
        assert pieces and all(len(piece) == PIECE_BYTES for piece in pieces)
        assert max(rms_dbfs(pcm16_to_float32(piece)) for piece in pieces) > SPEECH_DBFS

        assert seen.session_id == "sess_scripted"
        assert seen.conversation_id == "conv_scripted"
        assert (seen.user_item_id, seen.user_text) == (USER_ITEM, USER_TEXT)
        assert (seen.response_id, seen.answer_text, seen.answer_status) == (RESPONSE_ID, ANSWER_TEXT, "completed")
        assert seen.audio_pieces_received == 5
        await page.wait_for_selector("#errors [data-role=error][data-code=scripted_error]")
        assert await page.get_attribute("#connection", "data-state") == "open"  # an error event is not fatal
        assert await page.text_content("#vad") == "listening"  # speech_stopped came after speech_started

        # The answer is still playing (10 s of audio); speech from the user cuts it.
        await page.wait_for_selector("#player:not([data-playing='0'])")
        await page.screenshot(path=os.environ.get(SCREENSHOT_ENV) or tmp_path / "gateway-page.png")
        server.barge_in.set()
        await page.wait_for_selector("[data-role=user][data-item-id=item_user_2][data-status=partial]")
        await page.wait_for_selector("#vad[data-state=idle]")  # the barge-in's speech_stopped, the last event
        assert await page.get_attribute("#player", "data-interruptions") == "1"
        assert await page.get_attribute("#player", "data-playing") == "0"
        assert await page.get_attribute("#player", "data-pieces") == "5"  # the late piece was dropped

        # The microphone's file came round again after exactly its length of 24 kHz audio:
        # the page resampled its context's rate to 24 kHz, neither faster nor slower.
        await asyncio.wait_for(server.heard_speech_twice.wait(), timeout=20)
        first, second = server.speech_onsets[:2]
        assert abs((second - first) * PIECE_MS - wav_duration_ms(speech_wav)) <= 3 * PIECE_MS

        # Stop closes the socket and releases the microphone.
        await page.click("#start")
        await page.wait_for_selector("#mic[data-pieces-sent='']")
        assert await page.text_content("#start") == "Start"
        assert opened.errors == []


@pytest.mark.parametrize(
    ("key", "offered"),
    [
        ("ek_given_by_the_user", ["realtime", "openai-insecure-api-key.ek_given_by_the_user"]),
        ("", ["realtime"]),
    ],
    ids=["ephemeral-key", "anonymous"],
)
async def test_page_connects_without_minting(opened: OpenPage, key: str, offered: list[str]) -> None:
    server = ScriptedRealtimeServer()
    async with serving(server) as base_url:
        await start_page(opened.page, base_url, key)
        await opened.page.wait_for_selector("#session-id:text('sess_scripted')")
        assert server.mint_requests == []
        assert server.offered_protocols == [offered]
        assert opened.errors == []


async def test_a_refused_key_is_reported_and_opens_no_socket(opened: OpenPage) -> None:
    server = ScriptedRealtimeServer(mint_status=401)
    async with serving(server) as base_url:
        page = opened.page
        await page.goto(base_url)
        await page.fill("#key", "sk-wrong")
        await page.click("#start")
        await page.wait_for_selector("#connection[data-state=failed]")
        assert "HTTP 401" in (await page.text_content("#connection") or "")
        assert "scripted refusal" in (await page.text_content("#connection") or "")
        assert await page.text_content("#start") == "Start"
        assert len(server.mint_requests) == 1 and server.offered_protocols == []
