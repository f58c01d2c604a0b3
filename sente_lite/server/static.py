"""The browser client's files, as served by every face: moved to
:mod:`sente_lite.core.static` (the threaded and the ASGI face share it); these names stay
importable from here."""

from ..core.static import MODULE_EXPORTS, module_source, script_url, static_response, version_tag

__all__ = ["static_response", "script_url", "version_tag", "module_source", "MODULE_EXPORTS"]
