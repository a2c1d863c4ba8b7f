"""``conveyor web APP``: serve the dashboard and HTTP API on waitress, a production WSGI server."""

from __future__ import annotations

import ipaddress
import logging
import sys
import threading
from typing import Any

import click

from ..app import Conveyor
from .wsgi import WSGIApplication, create_app

#: Worker threads of the server: each open Server-Sent Events stream holds one.
THREADS = 128
#: Bytes a connection's output buffer takes before waitress starts a new one (and a writer waits
#: for the socket). Waitress frees a buffer's memory only once it is sent and replaced, so this
#: bounds what a long event stream keeps of what it already sent (the default, 16 MiB, let fifty
#: dashboards hold 300 MB after 10,000 jobs).
OUTBUF_HIGH_WATERMARK = 512 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve to anything


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def make_server(web: WSGIApplication, host: str, port: int, threads: int = THREADS) -> Any:
    """A waitress server for ``web`` bound to ``host:port`` (not yet serving; call ``.run()``).

    Output is sent as soon as it is written (waitress's default), which Server-Sent Events need.
    """
    from waitress.server import create_server

    return create_server(web, host=host, port=port, threads=threads, connection_limit=max(100, threads * 4),
                         channel_timeout=120, ident="conveyor", clear_untrusted_proxy_headers=True,
                         outbuf_high_watermark=OUTBUF_HIGH_WATERMARK)


class BackgroundServer:
    """A waitress server running in a daemon thread; :meth:`close` stops it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.port: int = server.effective_port
        self._closing = False
        self.thread = threading.Thread(target=self._run, name="conveyor-web", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run()
        except (OSError, ValueError):
            if not self._closing:  # closing its sockets under the loop's select() is expected
                raise

    def close(self) -> None:
        self._closing = True
        self.server.close()
        for channel in list(self.server._map.values()):  # open connections (live streams) too
            channel.close()
        self.server.task_dispatcher.shutdown(timeout=2)
        self.thread.join(timeout=5)


def serve_in_thread(app: Conveyor, host: str = "127.0.0.1", port: int = 0,
                    token: str | None = None) -> tuple[BackgroundServer, str, WSGIApplication]:
    """Start the web app in a daemon thread (for ``conveyor demo`` and tests).

    Returns ``(server, login_url, web_app)``; ``server.close()`` then ``web_app.close()`` stop it.
    ``port=0`` picks a free port.
    """
    web = create_app(app, token=token)
    server = BackgroundServer(make_server(web, host, port, threads=16))
    return server, web.login_path(base_url(host, server.port)), web


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs a token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="CONVEYOR_WEB_TOKEN", help="Access token (env CONVEYOR_WEB_TOKEN); "
              "generated and printed when not given.")
@click.option("--threads", default=THREADS, show_default=True, type=click.IntRange(4, 1024),
              help="Server threads; each open live-update stream holds one.")
def web(app_spec: str, host: str, port: int, token: str | None, threads: int) -> None:
    """Serve the dashboard and HTTP API of APP."""
    from ..loading import load_app

    if not is_loopback(host) and not token:
        click.echo(f"Error: refusing to bind {host} (not loopback) without a token: "
                   "set CONVEYOR_WEB_TOKEN or pass --token", err=True)
        sys.exit(2)
    app = load_app(app_spec)
    try:
        app.open()
    except Exception as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("conveyor.web").setLevel(logging.ERROR)  # no "generated a token" line: printed below
    web_app = create_app(app, token=token)
    try:
        server = make_server(web_app, host, port, threads)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {exc}", err=True)
        sys.exit(2)
    url = base_url(host, server.effective_port)
    if web_app.token_generated:
        click.echo(f"Conveyor dashboard: {web_app.login_path(url)}")
        click.echo("  (a token was generated for this run; set CONVEYOR_WEB_TOKEN to keep one)")
    else:
        click.echo(f"Conveyor dashboard: {url}/  (log in with the configured token)")
    sys.stdout.flush()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        web_app.close()
        server.close()
