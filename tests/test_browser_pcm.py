"""The page's pure audio helpers (gateway_svc/static/pcm.js), run in Chromium itself:
the resampler the microphone worklet uses, PCM16 conversion, base64 and 100 ms pieces.
The module is imported by a blank page of the same origin and called directly."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page

from tests.browser import browser_page

# One browser for the whole module: the page holds no state between calls.
pytestmark = pytest.mark.asyncio(loop_scope="module")

STATIC_DIR = Path(__file__).resolve().parents[1] / "gateway_svc" / "static"
BLANK_PAGE = "<!doctype html><title>pcm.js</title><link rel=icon href='data:,'>"


async def blank_page(request: web.Request) -> web.Response:
    return web.Response(text=BLANK_PAGE, content_type="text/html")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def page() -> AsyncIterator[Page]:
    """A blank page that can import /static/pcm.js."""
    app = web.Application()
    app.router.add_get("/", blank_page)
    app.router.add_static("/static", STATIC_DIR)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with browser_page(None) as opened:
            await opened.page.goto(str(server.make_url("/")))
            yield opened.page
            assert opened.errors == []
    finally:
        await server.close()


# A 1 s tone pushed through the resampler in 128-sample blocks (the worklet's render
# quantum) and all at once: the two must agree, since the worklet only ever sees blocks.
RESAMPLE_TONE = """async ([fromHz, toneHz]) => {
  const pcm = await import("/static/pcm.js");
  const tone = Float32Array.from({ length: fromHz }, (_, i) => 0.5 * Math.sin(2 * Math.PI * toneHz * i / fromHz));
  const blocks = new pcm.LinearResampler(fromHz, pcm.WIRE_RATE_HZ);
  const pieces = [];
  for (let i = 0; i < tone.length; i += 128) pieces.push(...blocks.push(tone.subarray(i, i + 128)));
  const whole = new pcm.LinearResampler(fromHz, pcm.WIRE_RATE_HZ).push(tone);
  return { pieces, whole: Array.from(whole) };
}"""


@pytest.mark.parametrize("from_hz", [48_000, 44_100, 24_000])
async def test_the_resampler_keeps_pitch_and_level_and_is_the_same_in_blocks(page: Page, from_hz: int) -> None:
    result = await page.evaluate(RESAMPLE_TONE, [from_hz, 1000])
    pieces, whole = np.array(result["pieces"]), np.array(result["whole"])
    assert np.allclose(pieces, whole, atol=1e-6)
    assert abs(len(pieces) - 24_000) <= 2  # one second at 24 kHz
    peak_hz = np.argmax(np.abs(np.fft.rfft(pieces))) * 24_000 / len(pieces)
    assert abs(peak_hz - 1000) <= 2  # the tone stays at 1 kHz
    assert abs(np.sqrt(np.mean(pieces**2)) - 0.5 / np.sqrt(2)) < 0.01  # and the level at 0.5 peak


PCM16_ROUND_TRIP = """async (samples) => {
  const pcm = await import("/static/pcm.js");
  const encoded = pcm.bytesToBase64(pcm.pcm16ToBytes(pcm.floatToPcm16(samples)));
  return { encoded, decoded: Array.from(pcm.pcm16ToFloat(pcm.base64ToBytes(encoded))) };
}"""


async def test_pcm16_is_little_endian_clipped_and_round_trips_through_base64(page: Page) -> None:
    samples = [0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 1e-6]
    result = await page.evaluate(PCM16_ROUND_TRIP, samples)
    expected = [0, 16384, -16384, 32767, -32768, 32767, -32768, 0]
    assert base64.b64decode(result["encoded"]) == struct.pack("<8h", *expected)
    assert result["decoded"] == [value / 32768 for value in expected]


GATHER_PIECES = """async () => {
  const pcm = await import("/static/pcm.js");
  const gatherer = new pcm.PieceGatherer(2400);
  const pieces = [];
  // 100 render quanta of 64 samples (128 at 48 kHz, halved): 6400 samples, two whole pieces.
  for (let block = 0; block < 100; block++) {
    const samples = Int16Array.from({ length: 64 }, (_, i) => (block * 64 + i) % 32768);
    for (const piece of gatherer.push(samples)) pieces.push(Array.from(piece));
  }
  return { pieces, waiting: gatherer.filled };
}"""


async def test_pieces_are_whole_100_ms_in_order_and_the_rest_waits(page: Page) -> None:
    result = await page.evaluate(GATHER_PIECES)
    assert [len(piece) for piece in result["pieces"]] == [2400, 2400]
    assert result["pieces"][0] + result["pieces"][1] == list(range(4800))
    assert result["waiting"] == 6400 - 4800
