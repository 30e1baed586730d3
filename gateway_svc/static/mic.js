// The microphone: getUserMedia -> MediaStreamSource -> the pcm16-capture worklet.
// Each ~100 ms piece of PCM16 LE 24 kHz mono goes to `onPiece(ArrayBuffer)`.

const WORKLET_URL = new URL("./pcm-worklet.js", import.meta.url);

export class Microphone {
  /** `context` is the page's AudioContext (its rate may be anything: the worklet resamples). */
  constructor(context, onPiece) {
    this.context = context;
    this.onPiece = onPiece;
    this.stream = null;
    this.source = null;
    this.node = null;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      // Echo cancellation stays on so the answer played on the speakers is not heard as the
      // user speaking (a false barge-in). Noise suppression and gain control stay off: the
      // server does its own voice detection on the signal as it is. Mono is what the wire carries.
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    await this.context.audioWorklet.addModule(WORKLET_URL);
    this.source = this.context.createMediaStreamSource(this.stream);
    // No outputs: the node is a sink, pulled by the graph without reaching the speakers.
    // One explicit channel: a stereo microphone is mixed down before the worklet sees it.
    this.node = new AudioWorkletNode(this.context, "pcm16-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
    });
    this.node.port.onmessage = (event) => this.onPiece(event.data);
    this.source.connect(this.node);
  }

  stop() {
    if (this.node) {
      this.node.port.onmessage = null;
      this.node.disconnect();
    }
    if (this.source) this.source.disconnect();
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = this.source = this.node = null;
  }
}
