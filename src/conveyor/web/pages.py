"""The dashboard's side of the WSGI adapter: Jinja templates and their filters, the page
endpoints, logging in and out, and static files. What each page shows is in
:mod:`conveyor.web.views`; :class:`~conveyor.web.wsgi.WSGIApplication` mixes this in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from werkzeug.routing import Map, MapAdapter
from werkzeug.wrappers import Request, Response

from ..brokers import STATES
from ..presentation import format_duration, format_timestamp, relative_time
from . import handlers, views
from .auth import SESSION_COOKIE, Auth, Session
from .handlers import Forbidden

if TYPE_CHECKING:
    from ..app import Conveyor

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "application/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}

# Who made a request: ("bearer", None) or ("session", Session).
Identity: TypeAlias = "tuple[str, Session | None]"


def _bytes(n: int | None) -> str:
    if not n:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=repr).decode()


def template_environment() -> Environment:
    """The dashboard's templates: everything escaped; times and durations as people read them."""
    env = Environment(loader=PackageLoader("conveyor.web", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ts=format_timestamp, duration=format_duration, relative=relative_time, bytes=_bytes,
                       pretty=_pretty)
    return env


class DashboardPages:
    """The page, login and static endpoints of :class:`~conveyor.web.wsgi.WSGIApplication`."""

    if TYPE_CHECKING:
        app: Conveyor
        auth: Auth
        jinja: Environment
        url_map: Map
        static: dict[str, bytes]
        static_version: str

        def problem(self, request: Request, status: int, title: str, detail: str, *, field: str | None = None,
                    body: dict[str, Any] | None = None) -> Response: ...

        def redirect(self, location: str, status: int = 303) -> Response: ...

        def same_origin(self, request: Request) -> bool: ...

        def check_mutation(self, request: Request, identity: Identity) -> None: ...

    def render(self, request: Request, identity: Identity | None, template: str, status: int = 200,
               **context: Any) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        csrf = ""
        if identity is not None and identity[1] is not None:
            csrf = self.auth.csrf_token(identity[1])

        def url(endpoint: str, **values: Any) -> str:
            return adapter.build(endpoint, {k: v for k, v in values.items() if v is not None and v != ""})

        def static(name: str) -> str:
            return adapter.build("static", {"filename": name, "v": self.static_version})

        html = self.jinja.get_template(template).render(
            url=url, static=static, csrf=csrf, partial=request.headers.get("X-Partial") == "1",
            signed_in=identity is not None, here=request.full_path.rstrip("?")[len(request.script_root):] or "/",
            root=request.script_root + "/", states=STATES,
            events_from=request.environ.get("conveyor.events_from"), **context)
        return Response(html, status=status, content_type="text/html; charset=utf-8")

    # -- pages ---------------------------------------------------------------------------------------
    def on_page_overview(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.render(request, identity, "overview.html", page="overview", **views.overview(self.app))

    def _jobs_page(self, request: Request, identity: Identity, page: str, query: Mapping[str, Any]) -> Response:
        context = views.jobs_page(self.app, query)
        return self.render(request, identity, "jobs.html", status=422 if context["error"] else 200, page=page,
                           query=dict(query), **context)

    def on_page_jobs(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self._jobs_page(request, identity, "jobs", request.args.to_dict())

    def on_page_failed(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self._jobs_page(request, identity, "failed", {**request.args.to_dict(), "state": "failed"})

    def on_page_job(self, request: Request, adapter: MapAdapter, identity: Identity, id: str) -> Response:
        return self.render(request, identity, "job.html", page="jobs", **views.job_page(self.app, id))

    def on_page_queues(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.render(request, identity, "queues.html", page="queues", **views.queues_page(self.app))

    def on_page_workers(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.render(request, identity, "workers.html", page="workers", **handlers.list_workers(self.app))

    # -- login ---------------------------------------------------------------------------------------
    def _safe_next(self, target: str | None) -> str:
        if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
            return "/"
        return target

    def _login(self, request: Request, adapter: MapAdapter, candidate: str | None, target: str | None) -> Response:
        if not self.auth.check_token(candidate):
            return self.render(request, None, "login.html", status=401, page="login", failed=True,
                               next=self._safe_next(target))
        response = self.redirect(request.script_root + self._safe_next(target))
        response.set_cookie(SESSION_COOKIE, self.auth.open_session(), max_age=self.auth.max_age,
                            path=(request.script_root or "") + "/", httponly=True, samesite="Lax",
                            secure=request.is_secure)
        return response

    def on_login_form(self, request: Request, adapter: MapAdapter, identity: Identity | None) -> Response:
        if "token" in request.args:
            return self._login(request, adapter, request.args.get("token"), request.args.get("next"))
        return self.render(request, identity, "login.html", page="login", failed=False,
                           next=self._safe_next(request.args.get("next")))

    def on_login(self, request: Request, adapter: MapAdapter, identity: Identity | None) -> Response:
        if not self.same_origin(request):
            raise Forbidden("the request comes from another origin", field="Origin")
        return self._login(request, adapter, request.form.get("token"), request.form.get("next"))

    def on_logout(self, request: Request, adapter: MapAdapter, identity: Identity | None) -> Response:
        if identity is None:
            raise handlers.Problem("not logged in")
        self.check_mutation(request, identity)
        response = self.redirect(adapter.build("login_form"))
        response.delete_cookie(SESSION_COOKIE, path=(request.script_root or "") + "/")
        return response

    def on_static(self, request: Request, adapter: MapAdapter, filename: str) -> Response:
        data = self.static.get(filename)
        if data is None:
            return self.problem(request, 404, "Not Found", f"no static file {filename!r}")
        ctype = STATIC_TYPES.get(os.path.splitext(filename)[1], "application/octet-stream")
        cache = "public, max-age=31536000, immutable" if request.args.get("v") else "public, max-age=300"
        return Response(data, content_type=ctype, headers={"Cache-Control": cache})

