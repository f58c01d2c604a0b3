"""Brokers: where channels live (publish order, offsets, history, recovery).

``local`` is the in-process broker (the default); ``redis`` shares channels between
server processes through Redis; ``publish_ids`` remembers accepted publish ids.
No sockets to peers: a broker hands built channel messages to the hub.
"""
