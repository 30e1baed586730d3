// What the page shows of the server's events. Only textContent is ever set from event
// data (never innerHTML): a transcript is text, whatever characters it holds.
//
// Stable hooks for people and tests:
//   #connection[data-state]                       idle|minting|connecting|open|closed|failed
//   #vad[data-state]                              speaking|idle
//   #session-id, #conversation-id                 from session.created / session.updated
//   [data-role=user][data-item-id=ID]             one user turn, data-status partial|completed|failed
//   [data-role=assistant][data-response-id=ID]    one answer, data-status in_progress, then response.status
//   #errors [data-role=error][data-code=CODE]     error events, newest last
//   #response-status                              the last response.done

const MAX_ERRORS_SHOWN = 20;

export class ConversationView {
  constructor(root) {
    this.root = root;
    this.element = (id) => root.getElementById(id);
    this.turns = new Map(); // "user:<item_id>" or "assistant:<response_id>" -> its <li>
    this.handlers = {
      "session.created": (e) => this.showSession(e),
      "session.updated": (e) => this.showSession(e),
      "input_audio_buffer.speech_started": (e) => this.speech(true, e.item_id),
      "input_audio_buffer.speech_stopped": (e) => this.speech(false, e.item_id),
      "input_audio_buffer.committed": (e) => this.userTurn(e.item_id),
      "conversation.item.input_audio_transcription.delta": (e) => this.userText(e.item_id, e.delta, false),
      "conversation.item.input_audio_transcription.completed": (e) => this.userText(e.item_id, e.transcript, true),
      "conversation.item.input_audio_transcription.failed": (e) => this.userFailed(e),
      "response.created": (e) => this.answer(e.response && e.response.id),
      "response.output_audio_transcript.delta": (e) => this.answerText(e.response_id, e.delta, false),
      "response.output_audio_transcript.done": (e) => this.answerText(e.response_id, e.transcript, true),
      "response.output_text.delta": (e) => this.answerText(e.response_id, e.delta, false),
      "response.output_text.done": (e) => this.answerText(e.response_id, e.text, true),
      "response.done": (e) => this.answerDone(e.response || {}),
      error: (e) => this.showError(e.error || {}),
    };
  }

  /** Show one server event; types the page has no use for are ignored (the API adds events over time). */
  handle(event) {
    const handler = this.handlers[event.type];
    if (handler) handler(event);
  }

  connection(state, detail) {
    const element = this.element("connection");
    element.dataset.state = state;
    element.textContent = detail ? `${state}: ${detail}` : state;
  }

  showSession(event) {
    const session = event.session || {};
    if (session.id) this.element("session-id").textContent = session.id;
    // conversation_id is this server's extension; accepted on the session or on the event.
    const conversationId = session.conversation_id || event.conversation_id;
    if (conversationId) this.element("conversation-id").textContent = conversationId;
  }

  speech(speaking, itemId) {
    const vad = this.element("vad");
    vad.dataset.state = speaking ? "speaking" : "idle";
    vad.textContent = speaking ? "you are speaking" : "listening";
    // The turn takes its place in the conversation when the user starts speaking,
    // so a transcript arriving late still shows where it was said.
    if (speaking && itemId) this.userTurn(itemId);
  }

  /** The element of one user turn (created on first mention). */
  userTurn(itemId) {
    return this.turn("user", "item-id", itemId || "unknown", "partial");
  }

  userText(itemId, text, final) {
    const turn = this.userTurn(itemId);
    const body = turn.querySelector(".text");
    body.textContent = final ? text || "" : body.textContent + (text || "");
    if (final) turn.dataset.status = "completed";
  }

  userFailed(event) {
    const turn = this.userTurn(event.item_id);
    turn.dataset.status = "failed";
    const message = (event.error && event.error.message) || "transcription failed";
    turn.querySelector(".note").textContent = message;
  }

  /** The element of one answer (created on first mention). */
  answer(responseId) {
    return this.turn("assistant", "response-id", responseId || "unknown", "in_progress");
  }

  answerText(responseId, text, final) {
    const body = this.answer(responseId).querySelector(".text");
    body.textContent = final ? text || "" : body.textContent + (text || "");
  }

  answerDone(response) {
    const answer = this.answer(response.id);
    const status = response.status || "completed";
    answer.dataset.status = status;
    const details = response.status_details || {};
    const reason = details.error && details.error.message ? details.error.message : details.reason;
    answer.querySelector(".note").textContent = status === "completed" ? "" : reason ? `${status}: ${reason}` : status;
    this.element("response-status").textContent = `last answer ${status}`;
  }

  showError(error) {
    const list = this.element("errors");
    const item = this.root.createElement("li");
    item.dataset.role = "error";
    item.dataset.code = error.code || error.type || "error";
    item.textContent = `${item.dataset.code}: ${error.message || "(no message)"}`;
    list.append(item);
    while (list.children.length > MAX_ERRORS_SHOWN) list.firstElementChild.remove();
  }

  turn(role, key, id, initialStatus) {
    const known = this.turns.get(`${role}:${id}`);
    if (known) return known;
    const turn = this.root.createElement("li");
    turn.dataset.role = role;
    turn.setAttribute(`data-${key}`, id);
    turn.dataset.status = initialStatus;
    const who = this.root.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "you" : "assistant";
    const text = this.root.createElement("span");
    text.className = "text";
    const note = this.root.createElement("span");
    note.className = "note";
    turn.append(who, text, note);
    this.element("turns").append(turn);
    this.turns.set(`${role}:${id}`, turn);
    return turn;
  }
}
