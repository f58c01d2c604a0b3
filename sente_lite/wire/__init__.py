"""The wire: what travels between peers, with no I/O.

``protocol`` (frames <-> values, names and error codes), ``packers`` (JSON and
MessagePack), ``framing`` (RFC 6455 frames), ``compression`` (permessage-deflate),
``tracing`` (W3C ``traceparent``), ``origins`` (Origin and Host values as compared).
"""
