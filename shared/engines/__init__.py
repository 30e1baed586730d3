"""Engine interfaces (one per session kind) and the `auto` choice."""
