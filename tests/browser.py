"""A real browser for the gateway's page: Debian's Chromium driven by Playwright.

The microphone is Chromium's fake capture device playing a WAV file that the
test writes from espeak-ng speech (Chromium loops the file), so the page's
whole audio path (getUserMedia, the AudioWorklet, PCM16 at 24 kHz, base64)
runs for real. Playwright never downloads a browser here: it drives the
system's ``/usr/bin/chromium`` (``scripts/env.sh`` installs it).

:func:`converse` is the page seen from outside: it takes a base URL, so it
drives the page served by a scripted test server or by the real gateway alike::

    wav = write_speech_wav(tmp_path / "mic.wav", "What is the capital of France?")
    async with browser_page(wav) as opened:
        seen = await converse(opened.page, "http://127.0.0.1:8080", key="")
    assert seen.answer_status == "completed" and opened.errors == []
"""

from __future__ import annotations

import contextlib
import shutil
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

from shared.audio import silence_pcm
from shared.tts import synthesize

CHROMIUM_PATH = Path("/usr/bin/chromium")
#: The fake capture device's file: PCM16 mono at 48 kHz, as a real microphone gives.
#: 24 kHz works as well: Chromium converts the file to its capture rate either way, and
#: the page resamples from its AudioContext's rate (44.1 kHz on a machine with no sound card).
FAKE_MIC_RATE_HZ = 48_000
#: Silence around the speech: the server's voice detection needs a quiet start and a
#: pause to end the turn (and Chromium loops the file, so it also separates repeats).
FAKE_MIC_SILENCE_MS = 1_000
#: Patience for one state of the page. Generous: a failure bound on a shared 2-core
#: machine, not a measurement.
DEFAULT_WAIT_MS = 20_000


def chromium_executable() -> Path | None:
    """Debian's Chromium: /usr/bin/chromium, else a ``chromium`` on PATH, else None."""
    if CHROMIUM_PATH.exists():
        return CHROMIUM_PATH
    found = shutil.which("chromium")
    return Path(found) if found else None


class ChromiumMissing(RuntimeError):
    """No Chromium to drive; the message says how to install it."""


def write_speech_wav(path: Path, text: str, *, sample_rate_hz: int = FAKE_MIC_RATE_HZ) -> Path:
    """Write ``text`` spoken by espeak-ng, with silence on both sides, as a PCM16 mono WAV."""
    silence = silence_pcm(FAKE_MIC_SILENCE_MS, sample_rate_hz)
    speech = synthesize(text, sample_rate_hz=sample_rate_hz)
    pcm = silence + speech + silence
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(pcm)
    return path


def wav_duration_ms(path: Path) -> float:
    """The length of a WAV file's audio, in milliseconds."""
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() * 1000 / wav.getframerate()


def chromium_args(fake_mic_wav: Path | None) -> list[str]:
    """Command-line switches: a granted fake microphone playing the WAV (if any), audio
    allowed to play. Playwright adds the rest (--headless, --mute-audio, and --no-sandbox,
    which root needs).
    """
    args = [
        "--autoplay-policy=no-user-gesture-required",
        # Containers give /dev/shm 64 MB, which Chromium's renderers outgrow.
        "--disable-dev-shm-usage",
    ]
    if fake_mic_wav is not None:
        args += [
            "--use-fake-ui-for-media-stream",  # grant getUserMedia without a prompt
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_mic_wav}",
        ]
    return args


@contextlib.asynccontextmanager
async def chromium(fake_mic_wav: Path | None) -> AsyncIterator[Browser]:
    """A headless Chromium whose microphone plays ``fake_mic_wav`` (None: no microphone); closed on exit."""
    executable = chromium_executable()
    if executable is None:
        # A failure, not a skip: a machine without the browser would otherwise pass by testing nothing.
        raise ChromiumMissing(
            f"{CHROMIUM_PATH} is missing: scripts/test.sh installs it "
            "(apt-get install -y --no-install-recommends chromium)"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=chromium_args(fake_mic_wav), headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass(frozen=True)
class OpenPage:
    """A page in a context of its own, with what the page reported as errors (console, uncaught)."""

    page: Page
    errors: list[str]


@contextlib.asynccontextmanager
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """A fresh page (in its own context: no cookies or storage shared) of ``browser``; closed on exit."""
    context = await browser.new_context(viewport={"width": 900, "height": 480})
    try:
        page = await context.new_page()
        page.set_default_timeout(DEFAULT_WAIT_MS)
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield OpenPage(page, errors)
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def browser_page(fake_mic_wav: Path | None) -> AsyncIterator[OpenPage]:
    """One page in a fresh Chromium whose microphone plays ``fake_mic_wav``."""
    async with chromium(fake_mic_wav) as browser, open_page(browser) as opened:
        yield opened


@dataclass(frozen=True)
class PageConversation:
    """What the page showed of the first exchange."""

    session_id: str
    conversation_id: str
    user_item_id: str
    user_text: str
    response_id: str
    answer_text: str
    answer_status: str
    audio_pieces_received: int


async def start_page(page: Page, base_url: str, key: str = "", *, wait_ms: int = DEFAULT_WAIT_MS) -> None:
    """Open the page at ``base_url``, type ``key`` and press Start; return once the socket is open."""
    await page.goto(base_url.rstrip("/") + "/")
    await page.fill("#key", key)
    await page.click("#start")
    await page.wait_for_selector("#connection[data-state=open]", timeout=wait_ms)


async def converse(page: Page, base_url: str, key: str = "", *, wait_ms: int = DEFAULT_WAIT_MS) -> PageConversation:
    """Start the page at ``base_url`` and wait for the first user turn's final transcript
    and the first answer's ``response.done``; return what the page shows of them.

    The fake microphone does the talking, so the server must hear speech in it
    (the gateway's VAD, or a scripted server's level check) for anything to happen.
    """
    await start_page(page, base_url, key, wait_ms=wait_ms)
    user = page.locator("[data-role=user][data-status=completed]").first
    await user.wait_for(timeout=wait_ms)
    answer = page.locator("[data-role=assistant]:not([data-status=in_progress])").first
    await answer.wait_for(timeout=wait_ms)
    return PageConversation(
        session_id=await page.text_content("#session-id") or "",
        conversation_id=await page.text_content("#conversation-id") or "",
        user_item_id=await user.get_attribute("data-item-id") or "",
        user_text=await user.locator(".text").text_content() or "",
        response_id=await answer.get_attribute("data-response-id") or "",
        answer_text=await answer.locator(".text").text_content() or "",
        answer_status=await answer.get_attribute("data-status") or "",
        audio_pieces_received=int(await page.get_attribute("#player", "data-pieces") or 0),
    )
