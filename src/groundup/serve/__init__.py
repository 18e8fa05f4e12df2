"""Serving: the OpenAI-compatible HTTP server (``groundup serve``) and the terminal chat (``groundup chat``)."""
