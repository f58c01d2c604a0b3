"""The server's core, shared by every face and free of sockets and threads of its own:
the ``dispatcher`` (what a connection's frames ask for, done through the ``ports`` a face
implements, under the channel policy of ``gate``), the ``hub`` (connections, users,
fan-out through a broker), admission (``security``), inbound and outbound bounds
(``inflow``, ``outbox``) and ``metrics``."""
