"""The web app of Conveyor: a dashboard and a JSON HTTP API over the job store of any broker.

``create_app(app)`` returns a WSGI application; serve it with ``conveyor web APP`` or mount it
in another WSGI app (Flask, Django) under a prefix. See ``docs/dashboard.md``.
"""

from __future__ import annotations

from .wsgi import WSGIApplication, create_app

__all__ = ["WSGIApplication", "create_app"]
