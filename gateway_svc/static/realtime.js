// The Realtime connection as a browser opens it (OpenAI Realtime GA wire format):
// an API key is first exchanged for an ephemeral `ek_` key, because a browser cannot
// set an Authorization header on a WebSocket; the key then rides in a subprotocol.

import { bytesToBase64 } from "./pcm.js";

export const EPHEMERAL_PREFIX = "ek_";
export const KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key.";
const EPHEMERAL_TTL_S = 600;

/** The first client event: a voice session, PCM16 24 kHz both ways, the server detects turns. */
export const SESSION_UPDATE = Object.freeze({
  type: "session.update",
  session: {
    type: "realtime",
    output_modalities: ["audio"],
    audio: {
      input: {
        format: { type: "audio/pcm", rate: 24000 },
        transcription: { model: "local" },
        turn_detection: { type: "server_vad" },
      },
      output: { format: { type: "audio/pcm", rate: 24000 } },
    },
  },
});

/** ws(s)://<this page's host>/v1/realtime?model=local */
export function realtimeUrl(pageLocation) {
  const scheme = pageLocation.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${pageLocation.host}/v1/realtime?model=local`;
}

/** The subprotocols to offer: "realtime", plus the ephemeral key when there is one. */
export function subprotocols(ephemeralKey) {
  return ephemeralKey ? ["realtime", KEY_SUBPROTOCOL_PREFIX + ephemeralKey] : ["realtime"];
}

/** Exchange an API key for an ephemeral one; throws an Error that says why on refusal. */
export async function mintEphemeralKey(apiKey) {
  const response = await fetch("/v1/realtime/client_secrets", {
    method: "POST",
    headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({
      expires_after: { anchor: "created_at", seconds: EPHEMERAL_TTL_S },
      session: { type: "realtime" },
    }),
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // A refusal may come as plain text; the status alone then says what happened.
  }
  if (!response.ok) {
    const reason = body && body.error && body.error.message ? `: ${body.error.message}` : "";
    throw new Error(`the key was refused (HTTP ${response.status})${reason}`);
  }
  if (!body || typeof body.value !== "string" || !body.value.startsWith(EPHEMERAL_PREFIX)) {
    throw new Error("the server minted no ephemeral key");
  }
  return body.value;
}

/**
 * One Realtime WebSocket. `onEvent(event)` gets every server event (parsed JSON);
 * `onState(state, detail)` gets "minting", "connecting", "open", "closed" or "failed".
 */
export class RealtimeConnection {
  constructor({ onEvent, onState }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.socket = null;
  }

  /** Mint a key if needed, open the socket and send session.update; resolves once open. */
  async open(key) {
    let ephemeralKey = null;
    if (key && !key.startsWith(EPHEMERAL_PREFIX)) {
      this.onState("minting");
      ephemeralKey = await mintEphemeralKey(key);
    } else if (key) {
      ephemeralKey = key;
    }
    this.onState("connecting");
    const socket = new WebSocket(realtimeUrl(window.location), subprotocols(ephemeralKey));
    this.socket = socket;
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      // Before open, a refusal (HTTP 401, no server) shows up as an error then a close.
      socket.onclose = (event) => reject(new Error(`the connection was refused (close ${event.code})`));
    });
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (event) => {
      this.socket = null;
      this.onState("closed", event.reason ? `${event.code} ${event.reason}` : String(event.code));
    };
    this.onState("open");
    this.send(SESSION_UPDATE);
  }

  receive(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      this.onEvent({ type: "error", error: { code: "unparsable_event", message: String(data).slice(0, 200) } });
      return;
    }
    this.onEvent(event);
  }

  send(event) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(event));
  }

  /** Send one piece of PCM16 LE 24 kHz mono (an ArrayBuffer) as input_audio_buffer.append. */
  sendAudio(pcmBuffer) {
    this.send({ type: "input_audio_buffer.append", audio: bytesToBase64(pcmBuffer) });
  }

  close() {
    if (this.socket) this.socket.close(1000, "stopped by the user");
  }
}
