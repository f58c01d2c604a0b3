"""The threaded client face: :class:`Client` (``client``), its connection and reader
thread (``io``), its channel API (``channels``) and how it writes (``send``)."""

from .client import ChannelMessage, Client, Recovery

__all__ = ["Client", "ChannelMessage", "Recovery"]
