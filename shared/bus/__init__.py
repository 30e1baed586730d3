"""The Redis Streams layer, one job per module:

- ``retry``: which Redis errors are transient, and the one retry helper;
- ``resp``: connecting, and packing/parsing the hot-path commands ourselves;
- ``groups``: consumer groups and the worker's group read;
- ``program`` + ``lua/batch.lua``: the batch program (op layout defined once);
- ``writer``: ``BatchWriter``, through which every worker write goes (gated,
  exactly-once effects);
- ``doorbell``: the bells that tell readers which streams to read (hints only).

The protocol these serve is described in docs/architecture.md.
"""
