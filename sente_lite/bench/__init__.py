"""Benchmarks (not imported by the library; ``sente-lite bench`` loads ``fanout``):
``fanout`` and its ``baseline`` server, ``framing``, ``browser``, ``socketio``, ``api``, ...;
``figures`` holds what they share."""
