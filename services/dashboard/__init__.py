"""The dashboard: a read-only web view of sessions, live and from the log.

- ``figure``: the study's figure as data (``aar plot`` draws it with matplotlib).
- ``data``: what each page shows (audit SQL over the views).
- ``live``: events pushed to open pages over Server-Sent Events, from NATS.
- ``access``: loopback-only, or the token.
- ``app``: the FastAPI application; ``server``: the bind and uvicorn.
- ``service``: the ``dashboard`` process of a stack (``aar up`` starts it).
"""
