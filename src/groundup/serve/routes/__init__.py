"""The server's routes, one router per module; :data:`ROUTERS` is what ``create_app`` mounts.

Adding an endpoint: a module here with ``router = fastapi.APIRouter()`` and its route functions, and
one line in ``ROUTERS`` (docs/serve.md, "Adding an endpoint").
"""

from __future__ import annotations

from groundup.serve.routes import chat, completions, models, monitoring, tokenize, ui

ROUTERS = [completions.router, chat.router, models.router, tokenize.router, monitoring.router, ui.router]
"""Every router the app mounts, in this order."""
