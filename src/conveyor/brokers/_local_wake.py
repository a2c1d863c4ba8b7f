"""Wake-ups between processes of one host that share a database file, through Unix datagrams.

Each waiting consumer binds a datagram socket in a folder beside the database (``<db>-wake/``).
A writer that commits a change that can make work ready sends one byte to every socket there, so
an idle consumer can sleep in ``select`` instead of polling. It is only a hint: a lost or missing
wake (another host, a full socket buffer, a writer that does not send) costs the consumer's
fallback poll, never a job. The datagram's content means nothing.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time

#: A Unix socket's path must fit in sun_path (108 bytes with its NUL); a longer one disables wakes.
MAX_PATH = 100
#: How long a writer trusts its list of waiters without a change of the folder's mtime (whose
#: granularity may hide a socket bound in the same tick as the last listing).
RELIST = 1.0
_GONE = (errno.ENOENT, errno.ECONNREFUSED)


def wake_folder(database: str) -> str:
    """The folder of the waiters of ``database`` (a file path)."""
    return os.path.abspath(database) + "-wake"


def _bind(sock: socket.socket, folder: str, path: str) -> bool:
    for _ in range(3):  # the last waiter to leave removes the folder: make it again
        try:
            os.makedirs(folder, exist_ok=True)
            sock.bind(path)
            return True
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return False


class Waiter:
    """One consumer's socket: bound on first use, in the process that uses it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._sock: socket.socket | None = None
        self._path = ""
        self._pid = 0
        self._failed = False
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket | None:
        with self._lock:
            return self._bound()

    def _bound(self) -> socket.socket | None:
        if self._sock is not None and self._pid == os.getpid():
            return self._sock
        if self._failed:
            return None
        if self._sock is not None:  # inherited through fork(): the parent's (it stays bound there)
            self._sock.close()
            self._sock = None
        path = os.path.join(self.folder, f"{os.getpid()}-{os.urandom(4).hex()}")
        if len(path.encode()) > MAX_PATH:
            self._failed = True
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if not _bind(sock, self.folder, path):
            sock.close()
            self._failed = True  # e.g. a read-only folder: the fallback poll alone
            return None
        sock.setblocking(False)
        self._sock, self._path, self._pid = sock, path, os.getpid()
        return sock

    def ready(self) -> bool:
        """Bind now (if not yet); False when wakes cannot be received here."""
        return self._socket() is not None

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake; True when one came (all pending are read)."""
        sock = self._socket()
        if sock is None:
            time.sleep(max(0.0, timeout))
            return False
        if not select.select([sock], [], [], max(0.0, timeout))[0]:
            return False
        try:
            while sock.recv(64):
                pass
        except OSError:  # BlockingIOError: nothing more pending
            pass
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and self._pid == os.getpid():
                self._sock.close()
                try:
                    os.unlink(self._path)
                    os.rmdir(self.folder)  # when it was the last one (else ENOTEMPTY)
                except OSError:
                    pass
            self._sock = None


class Waker:
    """Sends wakes to the waiters of one database; keeps their list until the folder changes."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._sock: socket.socket | None = None
        self._pid = 0
        self._mtime = -1
        self._listed = 0.0
        self._targets: list[str] = []
        self._lock = threading.Lock()  # one broker may be shared by threads (a web app's)

    def _waiters(self) -> list[str]:
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            self._targets, self._mtime = [], -1
            return []
        now = time.monotonic()
        if mtime != self._mtime or now - self._listed > RELIST:
            try:
                names = os.listdir(self.folder)
            except OSError:
                names = []
            self._targets = [os.path.join(self.folder, n) for n in names]
            self._mtime, self._listed = mtime, now
        return self._targets

    def wake(self) -> None:
        """One byte to every waiter; never raises."""
        with self._lock:
            self._wake()

    def _wake(self) -> None:
        targets = self._waiters()
        if not targets:
            return
        if self._sock is None or self._pid != os.getpid():
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._pid = os.getpid()
        dead = []
        for path in list(targets):
            try:
                self._sock.sendto(b"!", path)
            except OSError as exc:  # EAGAIN: its buffer is full, so a wake is pending anyway
                if exc.errno in _GONE:
                    dead.append(path)
        for path in dead:
            self._targets.remove(path)
            try:
                os.unlink(path)  # a waiter that died without closing: nobody is bound there
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and self._pid == os.getpid():
                self._sock.close()
            self._sock = None
