// Pure audio helpers, no DOM and no Web Audio: the microphone worklet and the player
// both import them, and the browser test calls them directly.

/** The wire format both ways: PCM16 LE mono at 24 kHz. */
export const WIRE_RATE_HZ = 24000;

/**
 * A streaming linear-interpolation resampler for one channel of float samples.
 * It keeps the last input sample and the fractional read position between calls,
 * so pieces of any length give the same output as the whole signal at once.
 * Linear interpolation has no anti-alias filter; that is acceptable here because
 * it only ever takes a microphone (48 or 44.1 kHz) down to 24 kHz, where the
 * folded band (above 12 kHz) holds little speech energy.
 */
export class LinearResampler {
  constructor(fromHz, toHz) {
    if (!(fromHz > 0 && toHz > 0)) throw new RangeError(`bad rates ${fromHz} -> ${toHz}`);
    this.step = fromHz / toHz; // input samples per output sample
    this.position = 0; // read position, relative to the first sample of the next piece
    this.previous = 0; // the last sample of the previous piece (index -1)
  }

  /** Resample one piece (Float32Array); returns a new Float32Array. */
  push(input) {
    const out = [];
    let pos = this.position;
    // Positions in [-1, 0) interpolate between the previous piece's last sample and input[0].
    while (pos < input.length - 1) {
      const base = Math.floor(pos);
      const frac = pos - base;
      const a = base < 0 ? this.previous : input[base];
      const b = input[base + 1];
      out.push(a + (b - a) * frac);
      pos += this.step;
    }
    if (input.length > 0) {
      this.previous = input[input.length - 1];
      this.position = pos - input.length;
    }
    return Float32Array.from(out);
  }
}

/** Float samples in [-1, 1] to PCM16 values (clipped), as an Int16Array. */
export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
  }
  return out;
}

/** PCM16 values (Int16Array) to little-endian bytes, whatever the CPU's byte order. */
export function pcm16ToBytes(samples) {
  const out = new Uint8Array(samples.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < samples.length; i++) view.setInt16(2 * i, samples[i], true);
  return out;
}

/** PCM16 LE bytes (ArrayBuffer or Uint8Array) to float samples in [-1, 1). */
export function pcm16ToFloat(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const view = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const out = new Float32Array(u8.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 32768;
  return out;
}

/** Bytes to base64. Chunked so a long buffer does not overflow the argument list of fromCharCode. */
export function bytesToBase64(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = "";
  for (let i = 0; i < u8.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Base64 to bytes (Uint8Array); throws on a malformed string. */
export function base64ToBytes(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * Gathers PCM16 samples into pieces of exactly `samplesPerPiece` (the last partial
 * piece waits for more). Returns the finished pieces of each push.
 */
export class PieceGatherer {
  constructor(samplesPerPiece) {
    this.size = samplesPerPiece;
    this.buffer = new Int16Array(samplesPerPiece);
    this.filled = 0;
  }

  push(samples) {
    const pieces = [];
    let offset = 0;
    while (offset < samples.length) {
      const take = Math.min(this.size - this.filled, samples.length - offset);
      this.buffer.set(samples.subarray(offset, offset + take), this.filled);
      this.filled += take;
      offset += take;
      if (this.filled === this.size) {
        pieces.push(this.buffer);
        this.buffer = new Int16Array(this.size);
        this.filled = 0;
      }
    }
    return pieces;
  }
}
