"""``GET /``: the chat page (one HTML file shipped in the package; no API key, no assets from elsewhere).

The page holds no data of its own: it calls ``/v1/models`` and ``/v1/chat/completions`` from the browser,
with the API key the user types into it when the server needs one.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import fastapi
from fastapi.responses import HTMLResponse

router = fastapi.APIRouter()
PATHS = ("/",)
"""The page's routes (answered without the API key: the page asks for it)."""


@cache
def chat_page() -> str:
    """The page's HTML, read once from the package (``groundup/serve/ui/chat.html``)."""
    return resources.files("groundup.serve").joinpath("ui/chat.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def index():
    return HTMLResponse(chat_page(), headers={"Cache-Control": "no-cache",
                                              "Content-Security-Policy": "default-src 'self'; "
                                              "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                              "img-src 'self' data:; connect-src 'self'"})
