"""The WSGI adapter: routing, authentication, CSRF and Origin checks, JSON and HTML responses,
gzip, Server-Sent Events. Everything the app *does* is in :mod:`conveyor.web.handlers`."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule
from werkzeug.wrappers import Request, Response

from ..app import Conveyor
from ..config import SECRET_WORDS
from ..errors import BrokerError
from . import handlers, metrics, openapi
from .auth import SESSION_COOKIE, Auth, generate_token
from .events import KINDS, EventPump, stream
from .handlers import Forbidden, Problem
from .pages import DashboardPages, Identity, template_environment
from .routes import ROUTES, Route

log = logging.getLogger("conveyor.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The login URL carries the token: never pass it on to another site. Not "no-referrer": under
    # it browsers send "Origin: null" with form posts, which the Origin check must refuse.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
COMPRESSIBLE = ("text/", "application/json", "application/problem+json", "application/javascript", "image/svg+xml")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

Handler = Callable[..., Response]


def secrets_of(app: Conveyor) -> list[bytes]:
    """What must never be shown: broker and store URLs, their passwords and secret-looking options."""
    found: set[str] = set()
    for url in (app.settings.url, app.settings.store):
        if not url:
            continue
        found.add(url)
        parts = urlsplit(url)
        if parts.password:
            found.add(parts.password)
            found.add(quote(parts.password, safe=""))
        for key, value in parse_qsl(parts.query):
            if any(word in key.lower() for word in SECRET_WORDS):
                found.add(value)
    return sorted((s.encode() for s in found if len(s) >= 4), key=len, reverse=True)


class WSGIApplication(DashboardPages):
    """The dashboard and HTTP API of one Conveyor app, as a WSGI application.

    Plain attributes tune it (set them before serving): ``sse_heartbeat`` (seconds between
    keep-alive comments), ``max_body`` (bytes of a request body, over which 413 is answered).

    Attributes:
        token: the access token (configured, or generated when none was).
        token_generated: True when the token was generated here.
    """

    sse_heartbeat = 15.0
    pump_interval = 0.25

    def __init__(self, app: Conveyor, *, token: str | None = None, secret: str | None = None) -> None:
        self.app = app
        token = token or os.environ.get("CONVEYOR_WEB_TOKEN") or None
        self.token_generated = token is None
        self.token = token or generate_token()
        self.auth = Auth(self.token, secret)
        # The arguments may be up to max_payload; the JSON around them and its escaping take more.
        self.max_body = app.settings.max_payload * 2 + 65536
        self.url_map = Map([Rule(r.rule, methods=[r.method], endpoint=r.endpoint) for r in ROUTES])
        self.routes: dict[str, Route] = {r.endpoint: r for r in ROUTES}
        self.jinja = template_environment()
        self.pump = EventPump(app.store.fork, interval=self.pump_interval)
        self.registry = metrics.registry_for(app)
        self.secrets = secrets_of(app)
        static = files("conveyor.web").joinpath("static")
        self.static: dict[str, bytes] = {p.name: p.read_bytes() for p in static.iterdir() if p.is_file()}
        self.static_version = hashlib.sha256(b"".join(self.static[k] for k in sorted(self.static))).hexdigest()[:10]
        if self.token_generated:
            log.warning("no token configured: generated one; log in at %s", self.login_path())

    def login_path(self, base: str = "") -> str:
        """The login URL (with the token) under ``base``, e.g. ``http://127.0.0.1:8000``."""
        return f"{base.rstrip('/')}/login?token={quote(self.token, safe='')}"

    def close(self) -> None:
        """Stop the event thread."""
        self.pump.close()

    # -- WSGI ----------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = self.max_body
        try:
            response = self.dispatch(request)
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            response = self.problem(request, 500, "Internal Server Error", "the server failed; see its log")
        return self.finish(request, response)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except RequestRedirect as exc:
            return exc.get_response(request.environ)
        except MethodNotAllowed as exc:
            response = self.problem(request, 405, "Method Not Allowed", f"{request.method} is not allowed here")
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
            return response
        except NotFound:
            return self.problem(request, 404, "Not Found", f"no route for {request.path}")
        route = self.routes[endpoint]
        handler: Handler = getattr(self, "on_" + endpoint)
        if route.kind == "static":
            return handler(request, adapter, **values)
        identity = self.identify(request)
        try:
            if route.kind == "auth":
                return handler(request, adapter, identity, **values)
            if identity is None:
                if route.kind == "page":
                    target = request.full_path.rstrip("?")[len(request.script_root):] or "/"
                    return self.redirect(adapter.build("login_form", {"next": target}))
                response = self.problem(request, 401, "Unauthorized",
                                        "send Authorization: Bearer <token>, or log in at /login")
                response.headers["WWW-Authenticate"] = 'Bearer realm="conveyor"'
                return response
            if route.mutates:
                self.check_mutation(request, identity)
            if route.kind == "page" and request.headers.get("X-Partial") != "1":
                request.environ["conveyor.events_from"] = self.events_position()
            return handler(request, adapter, identity, **values)
        except Problem as exc:
            return self.problem(request, exc.status, exc.title, exc.detail, body=exc.body())
        except RequestEntityTooLarge:
            return self.problem(request, 413, "Content Too Large",
                                f"the request body is over the limit of {self.max_body} bytes", field="body")
        except HTTPException as exc:
            return self.problem(request, exc.code or 400, exc.name, exc.description or exc.name)
        except BrokerError:
            log.exception("broker error on %s %s", request.method, request.path)
            # Its message may name the broker's URL: never send it.
            return self.problem(request, 503, "Service Unavailable", "the job store cannot be reached")

    def events_position(self) -> str | None:
        """Where the event stream stands, taken before a page reads its data, so that the page's
        stream starts there rather than when it opens (None: from when it opens)."""
        try:
            return self.pump.position()
        except Exception:  # live updates are a convenience: never fail the page for them
            log.exception("reading the event stream's position failed")
            return None

    # -- access --------------------------------------------------------------------------------------
    def identify(self, request: Request) -> Identity | None:
        authorization = request.headers.get("Authorization")
        if authorization:
            return ("bearer", None) if self.auth.check_bearer(authorization) else None
        session = self.auth.session(request.cookies.get(SESSION_COOKIE))
        return ("session", session) if session is not None else None

    def same_origin(self, request: Request) -> bool:
        """False when the request says it comes from another origin (Origin, else Referer)."""
        origin = request.headers.get("Origin")
        if origin is None:
            referer = request.headers.get("Referer")
            if not referer:
                return True  # not a browser, or one that sends neither: the CSRF token decides
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin.rstrip("/") == request.host_url.rstrip("/")

    def check_mutation(self, request: Request, identity: Identity) -> None:
        if not self.same_origin(request):
            raise Forbidden("the request comes from another origin", field="Origin")
        kind, session = identity
        if kind == "session":
            assert session is not None
            candidate = request.headers.get("X-CSRF-Token") or (
                request.form.get("_csrf") if request.mimetype in FORM_TYPES else None)
            if not self.auth.check_csrf(session, candidate):
                raise Forbidden("missing or wrong CSRF token (X-CSRF-Token header or _csrf field)",
                                field="X-CSRF-Token")

    # -- responses -----------------------------------------------------------------------------------
    def json(self, data: Any, status: int = 200) -> Response:
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS, default=repr)
        return Response(body, status=status, content_type="application/json")

    def problem(self, request: Request, status: int, title: str, detail: str, *, field: str | None = None,
                body: dict[str, Any] | None = None) -> Response:
        data = body or {"type": "about:blank", "title": title, "status": status, "detail": detail}
        if field is not None:
            data["field"] = field
        if self.wants_html(request):
            return self.render(request, None, "error.html", status=status, problem=data)
        response = Response(orjson.dumps(data, default=repr), status=status, content_type="application/problem+json")
        return response

    def wants_html(self, request: Request) -> bool:
        """Pages and form posts answer in HTML; the API and everything else in JSON."""
        path = request.path
        if path.startswith("/api/") or path == "/metrics":
            return request.mimetype in FORM_TYPES
        return True

    def redirect(self, location: str, status: int = 303) -> Response:
        return Response("", status=status, headers={"Location": location})

    def finish(self, request: Request, response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        if response.is_streamed:
            response.response = self._redacted_stream(response.response)
            return response
        body = response.get_data()
        for secret in self.secrets:
            if secret in body:
                body = body.replace(secret, b"***")
        ctype = response.mimetype or ""
        response.headers.add("Vary", "Accept-Encoding")
        if (len(body) >= 512 and request.accept_encodings["gzip"] > 0 and ctype.startswith(COMPRESSIBLE)
                and "Content-Encoding" not in response.headers):
            body = gzip.compress(body, compresslevel=5)
            response.headers["Content-Encoding"] = "gzip"
        response.set_data(body)
        return response

    def _redacted_stream(self, chunks: Iterable[bytes] | Iterable[str]) -> Iterator[bytes]:
        try:
            for item in chunks:
                chunk = item.encode() if isinstance(item, str) else item
                for secret in self.secrets:
                    chunk = chunk.replace(secret, b"***")
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    # -- reading input -------------------------------------------------------------------------------
    def body(self, request: Request) -> Any:
        """The JSON body (None when empty), or the form as a dict for form posts."""
        if request.mimetype in FORM_TYPES:
            return request.form
        data = request.get_data(cache=True)
        if not data.strip():
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise handlers.BadRequest(f"the body is not valid JSON: {exc}", field="body") from None

    def done(self, request: Request, adapter: MapAdapter, data: Any, status: int = 200) -> Response:
        """A mutation's answer: JSON, or for a form post a redirect to its ``_next`` page."""
        if request.mimetype not in FORM_TYPES:
            return self.json(data, status)
        target = request.form.get("_next") or "/"
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"  # never an open redirect
        return self.redirect(request.script_root + target)

    # -- API -----------------------------------------------------------------------------------------
    def on_api_enqueue(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        body = self.body(request)
        if request.mimetype in FORM_TYPES:
            raise handlers.Unprocessable("send the job as a JSON object", field="body")
        status, job = handlers.enqueue(self.app, body, request.headers.get("Idempotency-Key"))
        response = self.json(job, status)
        response.headers["Location"] = adapter.build("api_get_job", {"id": job["id"]})
        return response

    def on_api_list_jobs(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.json(handlers.list_jobs(self.app, request.args))

    def on_api_bulk(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        body = self.body(request)
        if request.mimetype in FORM_TYPES:
            form: Mapping[str, Any] = body
            ids = form.getlist("ids") if hasattr(form, "getlist") else []
            filters = {k: form.get(k) for k in ("state", "queue", "task", "search", "since", "until") if form.get(k)}
            body = {"action": form.get("action"), **({"ids": ids} if ids else {"filter": filters})}
        return self.done(request, adapter, handlers.bulk(self.app, body))

    def on_api_get_job(self, request: Request, adapter: MapAdapter, identity: Identity, id: str) -> Response:
        return self.json(handlers.get_job(self.app, id))

    def on_api_delete_job(self, request: Request, adapter: MapAdapter, identity: Identity, id: str) -> Response:
        return self.done(request, adapter, handlers.delete_job(self.app, id))

    def on_api_cancel_job(self, request: Request, adapter: MapAdapter, identity: Identity, id: str) -> Response:
        return self.done(request, adapter, handlers.cancel_job(self.app, id))

    def on_api_retry_job(self, request: Request, adapter: MapAdapter, identity: Identity, id: str) -> Response:
        return self.done(request, adapter, handlers.retry_job(self.app, id))

    def on_api_queues(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.json(handlers.list_queues(self.app))

    def _queue(self, request: Request, adapter: MapAdapter, name: str, action: str) -> Response:
        body = self.body(request)
        if request.mimetype in FORM_TYPES:
            states = body.getlist("states") if hasattr(body, "getlist") else []
            body = {"states": states} if states else None
        return self.done(request, adapter, handlers.queue_action(self.app, name, action, body))

    def on_api_pause_queue(self, request: Request, adapter: MapAdapter, identity: Identity, name: str) -> Response:
        return self._queue(request, adapter, name, "pause")

    def on_api_resume_queue(self, request: Request, adapter: MapAdapter, identity: Identity, name: str) -> Response:
        return self._queue(request, adapter, name, "resume")

    def on_api_purge_queue(self, request: Request, adapter: MapAdapter, identity: Identity, name: str) -> Response:
        return self._queue(request, adapter, name, "purge")

    def on_api_workers(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.json(handlers.list_workers(self.app))

    def on_api_stats(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return self.json(handlers.stats(self.app, request.args))

    def on_api_events(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        kinds = frozenset(k.strip() for k in request.args.get("kind", "").split(",") if k.strip())
        if kinds - KINDS:
            raise handlers.Unprocessable("kind must list job, queue or worker", field="kind")
        last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or None
        body = stream(self.pump, last, kinds or None, request.args.get("job") or None, heartbeat=self.sse_heartbeat)
        return Response(body, status=200, mimetype="text/event-stream", direct_passthrough=True,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def on_api_openapi(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        from .. import __version__

        doc = openapi.document(__version__)
        doc["servers"] = [{"url": request.script_root or "/"}]
        return self.json(doc)

    def on_metrics(self, request: Request, adapter: MapAdapter, identity: Identity) -> Response:
        return Response(metrics.render(self.registry), content_type=metrics.CONTENT_TYPE)


def create_app(app: Conveyor, *, token: str | None = None, secret: str | None = None) -> WSGIApplication:
    """The dashboard and HTTP API of ``app`` as a WSGI application.

    Args:
        app: the Conveyor app whose store it shows.
        token: the access token; default ``CONVEYOR_WEB_TOKEN``, else a random one is generated
            (see ``.token`` and ``.login_path()``).
        secret: key that signs session cookies and CSRF tokens; default derived from the token.
    """
    return WSGIApplication(app, token=token, secret=secret)


__all__ = ["Forbidden", "WSGIApplication", "create_app"]
