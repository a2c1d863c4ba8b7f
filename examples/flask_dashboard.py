"""The Conveyor dashboard mounted at /conveyor inside a Flask app.

Flask is not a dependency of Conveyor; install it yourself::

    pip install flask
    cd examples
    CONVEYOR_WEB_TOKEN=change-me flask --app flask_dashboard:site run
    # then open http://127.0.0.1:5000/conveyor/login?token=change-me

The dashboard is an ordinary WSGI app, so werkzeug's DispatcherMiddleware sends every request
under /conveyor to it and the rest to Flask; its links, cookies and API all live under the prefix.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from conveyor import Conveyor
from conveyor.web import create_app


def build(jobs: Conveyor, token: str | None = None) -> Flask:
    """A Flask site with the dashboard of ``jobs`` under /conveyor (token: see ``create_app``)."""
    site = Flask(__name__)

    @site.get("/")
    def home() -> str:
        return "Hello from Flask. The job dashboard is at /conveyor/."

    site.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        site.wsgi_app, {"/conveyor": create_app(jobs, token=token)})
    return site


jobs = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db


@jobs.task
def resize(path: str, width: int = 640) -> str:
    return f"{path}@{width}"


site = build(jobs)  # token from CONVEYOR_WEB_TOKEN, else generated and logged
