"""OpenAI Realtime (GA) client pieces, split the sans-I/O way.

- the wire format as pydantic models (pure): :mod:`shared.realtime.session_config`
  (what ``session.update`` carries, the audio format),
  :mod:`shared.realtime.client_events` (built and serialised) and
  :mod:`shared.realtime.server_events` (parsed, never raising);
- the session state machines (pure: events in, actions out; no asyncio, no
  websockets): :mod:`shared.realtime.transcription_state`,
  :mod:`shared.realtime.conversation_state`, and what they share in
  :mod:`shared.realtime.session_common` (the ``Send`` action, event ids);
- :mod:`shared.realtime.retry_policy`: after a close or a refused handshake,
  reconnect, open a new session, or give up (pure);
- :mod:`shared.realtime.connection`: the only module that touches a socket.
"""
