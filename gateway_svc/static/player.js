// Gap-free playback of the answer's audio: each PCM16 24 kHz piece becomes an AudioBuffer
// scheduled to start exactly where the previous one ends (the context resamples 24 kHz to
// its own rate). `stop()` cuts everything scheduled: the barge-in. Audio of a response
// cut that way that is still in flight is dropped when it arrives.
//
// The state is mirrored on `element` for people and tests: data-playing (pieces scheduled
// and not yet ended), data-pieces (pieces received), data-interruptions (stops that cut
// audio still playing or scheduled).

import { WIRE_RATE_HZ, base64ToBytes, pcm16ToFloat } from "./pcm.js";

// Start the first piece slightly in the future: a piece scheduled at currentTime itself
// would lose its first samples to the time the graph takes to pick it up.
const START_LEAD_S = 0.05;

export class Player {
  constructor(context, element) {
    this.context = context;
    this.element = element;
    this.playing = new Set();
    this.nextStartS = 0;
    this.pieces = 0;
    this.interruptions = 0;
    this.responseId = null; // the response whose audio was queued last
    this.cutResponses = new Set();
    this.show();
  }

  /** Queue one base64 PCM16 LE 24 kHz mono piece of `responseId` after everything already queued. */
  enqueue(base64Audio, responseId) {
    if (this.cutResponses.has(responseId)) return;
    const samples = pcm16ToFloat(base64ToBytes(base64Audio));
    this.pieces += 1;
    this.responseId = responseId;
    if (samples.length > 0) {
      const buffer = this.context.createBuffer(1, samples.length, WIRE_RATE_HZ);
      buffer.copyToChannel(samples, 0);
      const source = this.context.createBufferSource();
      source.buffer = buffer;
      source.connect(this.context.destination);
      // After a gap (nothing queued any more) start anew a little ahead of now.
      const startS = Math.max(this.nextStartS, this.context.currentTime + START_LEAD_S);
      source.start(startS);
      this.nextStartS = startS + buffer.duration;
      this.playing.add(source);
      source.onended = () => {
        this.playing.delete(source);
        this.show();
      };
    }
    this.show();
  }

  /** Stop every queued piece at once (barge-in or the end of the session). */
  stop() {
    if (this.playing.size > 0) this.interruptions += 1;
    if (this.responseId !== null) this.cutResponses.add(this.responseId);
    for (const source of this.playing) {
      source.onended = null;
      source.stop();
      source.disconnect();
    }
    this.playing.clear();
    this.nextStartS = 0;
    this.show();
  }

  show() {
    this.element.dataset.playing = String(this.playing.size);
    this.element.dataset.pieces = String(this.pieces);
    this.element.dataset.interruptions = String(this.interruptions);
    this.element.textContent = this.playing.size > 0 ? "playing the answer" : "silent";
  }
}
