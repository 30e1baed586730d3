"""OpenAI Realtime (GA) client pieces, split the sans-I/O way.

- :mod:`shared.realtime.events`: the wire format as pydantic models (pure).
- :mod:`shared.realtime.state`: session state machines and the retry policy
  (pure: events in, actions out; no asyncio, no websockets).
- :mod:`shared.realtime.connection`: the only module that touches a socket.
"""
