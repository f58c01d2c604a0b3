"""Publishing from any backend: the HTTP server API and the write-only :class:`Publisher`.

:mod:`~sente_lite.api.http_api` holds the methods (sans-I/O), :mod:`~sente_lite.api.wire`
the HTTP/1.1 parsing, :mod:`~sente_lite.server.api_front` their place on the server's network
loop, :mod:`~sente_lite.api.publisher` the client side. See docs/api.md.
"""
