"""``stagedx serve``: an OpenAI-compatible HTTP server over one bundle (no PyTorch involved).

Modules: ``schemas`` (request parsing and validation, OpenAI-style errors), ``chat`` (chat
templates), ``worker`` (the single decode thread and its bounded FIFO queue), ``metrics``
(Prometheus text), ``app`` (the Starlette routes, authentication, server-sent events) and
``cli`` (the command). Starlette, uvicorn and Jinja2 come with the ``serve`` extra and are
imported inside the command, so ``stagedx --help`` needs none of them.
"""
