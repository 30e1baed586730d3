// The microphone's AudioWorklet: takes the first input channel at the context's rate
// (the global `sampleRate` of the worklet scope), resamples it to 24 kHz, converts it to
// PCM16 LE and posts pieces of ~100 ms (ArrayBuffers, transferred) to the page.

import { LinearResampler, PieceGatherer, WIRE_RATE_HZ, floatToPcm16, pcm16ToBytes } from "./pcm.js";

const PIECE_MS = 100;

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    // No resampler at 24 kHz already: copying the samples is exact.
    this.resampler = sampleRate === WIRE_RATE_HZ ? null : new LinearResampler(sampleRate, WIRE_RATE_HZ);
    this.gatherer = new PieceGatherer((WIRE_RATE_HZ * PIECE_MS) / 1000);
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    // An input with no channel connected yet (or a stopped track) gives nothing to send.
    if (channel && channel.length > 0) {
      const samples = this.resampler ? this.resampler.push(channel) : channel;
      for (const piece of this.gatherer.push(floatToPcm16(samples))) {
        const bytes = pcm16ToBytes(piece);
        this.port.postMessage(bytes.buffer, [bytes.buffer]);
      }
    }
    return true; // keep running until the page disconnects the node
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
