"""The live web dashboard served by the coordinator (``dagon coordinator --ui-port N``).

It lives in the facade, not in ``dagon.core``: it is a presentation of the coordinator
(like ``dagon watch`` and ``dagon report``, whose Gantt logic it reuses) that observes it
only through the public listener API and its read-only views, so the scheduling core
carries no web code and no static assets. See docs/dashboard.md.
"""

from dagon._ui._cli import UiSettings, add_ui_arguments, serve_ui, ui_settings
from dagon._ui._feed import UiFeed
from dagon._ui._server import Dashboard
from dagon._ui._token import TOKEN_FILE, load_or_create_token

__all__ = [
    "TOKEN_FILE",
    "Dashboard",
    "UiFeed",
    "UiSettings",
    "add_ui_arguments",
    "load_or_create_token",
    "serve_ui",
    "ui_settings",
]
