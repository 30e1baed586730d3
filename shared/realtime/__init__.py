"""OpenAI Realtime (GA) client pieces, split the sans-I/O way.

- the wire format as pydantic models (pure): :mod:`shared.realtime.session_config`
  (what ``session.update`` carries, the audio format),
  :mod:`shared.realtime.client_events` (built and serialised) and
  :mod:`shared.realtime.server_events` (parsed, never raising);
- :mod:`shared.realtime.state`: session state machines and the retry policy
  (pure: events in, actions out; no asyncio, no websockets).
- :mod:`shared.realtime.connection`: the only module that touches a socket.
"""
