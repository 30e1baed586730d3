"""Shared code of the services: entry models, settings, the stream bus, the ownership runtime, engines."""
