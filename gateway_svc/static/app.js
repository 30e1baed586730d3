// The page's wiring: Start opens the connection, then the microphone; server events go
// to the view and the answer's audio to the player; speech_started cuts playback.

import { Microphone } from "./mic.js";
import { Player } from "./player.js";
import { RealtimeConnection } from "./realtime.js";
import { ConversationView } from "./view.js";

const view = new ConversationView(document);
const button = document.getElementById("start");
const keyField = document.getElementById("key");
const micStatus = document.getElementById("mic");

let session = null; // { context, connection, player, microphone } while running

function showMic(piecesSent) {
  micStatus.dataset.piecesSent = piecesSent === null ? "" : String(piecesSent);
  micStatus.textContent = piecesSent === null ? "microphone off" : `microphone on (${piecesSent} pieces sent)`;
}

function onServerEvent(event) {
  if (!session) return;
  if (event.type === "response.output_audio.delta") session.player.enqueue(event.delta, event.response_id);
  // Barge-in: the user talking over the answer silences it at once (the server
  // cancels the response on its side).
  if (event.type === "input_audio_buffer.speech_started") session.player.stop();
  view.handle(event);
}

function onConnectionState(state, detail) {
  view.connection(state, detail);
  if (state === "closed") stop();
}

async function start() {
  // The AudioContext is made inside the click, so autoplay rules let it play. At the wire's
  // 24 kHz the browser resamples the microphone itself, with a proper filter (a linear
  // resampler aliases enough to cost the recogniser words); the worklet's resampler is
  // only the fallback for a browser that refuses the rate.
  let context;
  try {
    context = new AudioContext({ sampleRate: 24000 });
  } catch {
    context = new AudioContext();
  }
  const connection = new RealtimeConnection({ onEvent: onServerEvent, onState: onConnectionState });
  const player = new Player(context, document.getElementById("player"));
  const current = { context, connection, player, microphone: null };
  session = current;
  button.textContent = "Stop";
  try {
    await context.resume();
    await connection.open(keyField.value.trim());
    let piecesSent = 0;
    current.microphone = new Microphone(context, (piece) => {
      connection.sendAudio(piece);
      showMic(++piecesSent);
    });
    showMic(0);
    await current.microphone.start();
  } catch (error) {
    if (session === current) {
      stop();
      view.connection("failed", error.message);
    }
  }
}

function stop() {
  const current = session;
  if (!current) return;
  session = null;
  if (current.microphone) current.microphone.stop();
  current.player.stop();
  current.connection.close();
  current.context.close();
  button.textContent = "Start";
  showMic(null);
}

document.getElementById("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  if (session) {
    stop();
    view.connection("closed", "stopped");
  } else {
    start();
  }
});

showMic(null);
view.connection("idle");
