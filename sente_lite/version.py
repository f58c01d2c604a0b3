"""The package version (read by setup.cfg and the server API's ``info``)."""

__version__ = "0.1.0"
