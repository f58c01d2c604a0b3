"""The Redis broker: channels, history, publish ids and user routing shared by several
server processes (``broker``), and its parts: the link and its threads (``link``),
publishes as one Lua script each (``publish``), channels seen from one server
(``channels``), users across servers (``presence``)."""
