"""Issue #12's figures on PostgreSQL, beside the PostgreSQL peers, in one interleaved run.

``python -m bench.postgres --url postgresql://127.0.0.1:5432/test [--reps 3] [--phases ...]
[--peers DIR --peers-venv VENV]`` prints one JSON object on stdout (progress on stderr). Each
repetition runs every phase once, in this order, so a slow stretch of the shared machine hits all of
them alike; the summary quotes the median of the repetitions.

Phases (each on a schema of its own, dropped and made again with ``conveyor migrate``'s code):

* ``peers``: one rep of the peer harness (``shared/bench/peers-pg``, copied to ``DIR``: the shared
  folder is read-only) with procrastinate, pgqueuer, the bare SKIP LOCKED floor and Conveyor, all on
  the harness's INCR task (``--peers-libs``, ``--peers-variants``). Read from its
  ``raw/results-<lib>-r<rep>.json``.
* ``enqueue``: ``noop.enqueue(i)`` against a bare one-row ``INSERT …; COMMIT`` loop (psycopg 3,
  autocommit, the same connection options as the store) in the same process, in alternating blocks
  (floor, ours, floor, ours …). Two floors: ``plain`` is a plain table ``(id identity primary key,
  task text, payload bytea)``, the bar of the issue; ``jobs`` is the same one-row INSERT into
  ``conveyor_jobs`` itself (its indexes and triggers, no Python). With the server on this host, each
  block also reads the CPU time its server process spent (psutil, by backend pid): CPU time is
  what a busy shared machine disturbs least.
* ``bulk``: ``noop.enqueue_many`` in batches of ``--batch`` (``--bulk-n`` jobs), and a COPY of as many
  rows into the plain table (the floor), in ``--blocks`` alternating blocks; medians of the blocks.
* ``drain``: ``python -m bench --phases drain,latency`` (the usual harness: 2 worker processes, a
  no-op task, ``--n`` jobs, then ``--latency-n`` sequential ``enqueue(i).result()``); then again
  with each URL option of ``--drain-options`` (default ``async_acks=1``).
* ``claim``: the store's own claim (``fetch``, ``--claim-batch`` per call, each batch then acked
  untimed) timed over ``--claim-n`` jobs: on an empty table, then with ``--finished`` finished jobs in
  it (inserted by one ``INSERT … SELECT generate_series``): never analyzed (this server runs with
  autovacuum off), ``stale`` (ANALYZE after the history, before the jobs) and ``fresh`` (VACUUM
  ANALYZE after the jobs were enqueued).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PEER_VARIANTS = "2p-c8,2p-b10,2p-delete-b100,2p-lease-b100,process-c2"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = "&".join([q for q in parts.query.split("&") if q and not q.startswith("schema=")] + [f"schema={schema}"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def fresh_store(url: str, schema: str) -> str:
    """Drop ``schema`` and migrate it again; the store's URL."""
    from conveyor.brokers.postgres import PostgresBroker

    store_url = with_schema(url, schema)
    broker = PostgresBroker(store_url)
    broker.drop()
    broker.migrate()
    return store_url


def make_app(url: str) -> tuple[Any, Any]:
    from conveyor import Conveyor

    app = Conveyor(url)

    @app.task(name="noop")
    def noop(x: int) -> int:
        return x

    app.open()
    return app, noop


def libpq(url: str) -> str:
    from conveyor.brokers.postgres.link import parse_url

    return parse_url(url)[0]


# -- single enqueue ---------------------------------------------------------------------------
def _server_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) the server process ``pid`` (on this host) has used; None when
    unknown or not readable."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def phase_enqueue(url: str, n: int, blocks: int) -> dict[str, Any]:
    store_url = fresh_store(url, "cbench_enqueue")
    app, noop = make_app(store_url)
    conninfo = libpq(store_url)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=5) as conn:
        conn.execute("CREATE TABLE cbench_enqueue.bare (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "task text NOT NULL, payload bytea NOT NULL)")
        jobs_sql = ("INSERT INTO cbench_enqueue.conveyor_jobs (id, task, queue, state, priority, payload, "
                    "max_attempts, created_at, run_at, updated_at) "
                    "VALUES (%s, 'noop', 'default', 'queued', 0, %s, 1, %s, %s, %s)")
        payload = b'{"args":[1],"kwargs":{}}'

        def plain(k: int) -> None:
            for _ in range(k):
                conn.execute("INSERT INTO cbench_enqueue.bare (task, payload) VALUES ('noop', %s)", (payload,))

        counter = iter(range(10**9))

        def jobs(k: int) -> None:
            for _ in range(k):
                now = time.time()
                conn.execute(jobs_sql, (f"bare-{next(counter)}", payload, now, now, now))

        def ours(k: int) -> None:
            for i in range(k):
                noop.enqueue(i)

        for fn in (plain, jobs, ours):  # warm: connections, prepared statements
            fn(20)
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        # The store's pool keeps one connection for a producer with one thread.
        ours_backend = app.broker._run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        local = conn.info.host in ("127.0.0.1", "::1", "localhost") or conn.info.host.startswith("/")
        pids = {"plain": backend, "jobs": backend, "ours": ours_backend} if local else {}
        rates: dict[str, list[float]] = {"plain": [], "jobs": [], "ours": []}
        server: dict[str, list[float]] = {"plain": [], "jobs": [], "ours": []}
        cpu: list[float] = []
        for _ in range(blocks):
            for name, fn in (("plain", plain), ("ours", ours), ("jobs", jobs)):
                s0 = _server_cpu(pids.get(name))
                c0, t0 = time.process_time(), time.perf_counter()
                fn(n)
                wall = time.perf_counter() - t0
                s1 = _server_cpu(pids.get(name))
                rates[name].append(n / wall)
                if s0 is not None and s1 is not None:
                    server[name].append((s1 - s0) / n * 1e6)
                if name == "ours":
                    cpu.append((time.process_time() - c0) / n * 1e6)
    app.close()
    out: dict[str, Any] = {f"{k}_jobs_per_s": round(statistics.median(v), 1) for k, v in rates.items()}
    if all(server.values()):
        out["server_cpu_us_per_insert"] = {k: round(statistics.median(v), 1) for k, v in server.items()}
    out["blocks"] = {k: [round(x) for x in v] for k, v in rates.items()}
    out["ours_cpu_us_per_job"] = round(statistics.median(cpu), 1)
    out["vs_plain"] = round(out["ours_jobs_per_s"] / out["plain_jobs_per_s"], 3)
    out["vs_jobs_insert"] = round(out["ours_jobs_per_s"] / out["jobs_jobs_per_s"], 3)
    out["n_per_block"] = n
    return out


# -- enqueue_many -----------------------------------------------------------------------------
def phase_bulk(url: str, n: int, batch: int, blocks: int = 3) -> dict[str, Any]:
    """``blocks`` alternating blocks of ``n`` jobs each: ours (``enqueue_many`` in batches of
    ``batch``), then the floor (a COPY of as many rows into a plain table); medians of the blocks."""
    store_url = fresh_store(url, "cbench_bulk")
    app, noop = make_app(store_url)
    noop.enqueue_many([(i,) for i in range(batch)])  # warm: connection, types
    rates: dict[str, list[float]] = {"ours": [], "floor": []}
    cpus: list[float] = []
    with psycopg.connect(libpq(store_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE cbench_bulk.bare (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "task text NOT NULL, payload bytea NOT NULL)")
        for _ in range(blocks):
            c0, t0 = time.process_time(), time.perf_counter()
            for start in range(0, n, batch):
                noop.enqueue_many([(i,) for i in range(start, min(n, start + batch))])
            rates["ours"].append(n / (time.perf_counter() - t0))
            cpus.append((time.process_time() - c0) / n * 1e6)
            t1 = time.perf_counter()
            for start in range(0, n, batch):
                with conn.cursor() as cur, cur.copy("COPY cbench_bulk.bare (task, payload) FROM STDIN") as copy:
                    for i in range(start, min(n, start + batch)):
                        copy.write_row(("noop", b'{"args":[%d]}' % i))
            rates["floor"].append(n / (time.perf_counter() - t1))
        queued = conn.execute("SELECT count(*) FROM cbench_bulk.conveyor_jobs WHERE state = 'queued'").fetchone()
    app.close()
    ours, floor = statistics.median(rates["ours"]), statistics.median(rates["floor"])
    return {"jobs_per_s": round(ours, 1), "cpu_us_per_job": round(statistics.median(cpus), 2), "n": n,
            "batch": batch, "blocks": {k: [round(x) for x in v] for k, v in rates.items()},
            "queued_after": queued[0] if queued else None, "queued_expected": batch + n * blocks,
            "floor_copy_jobs_per_s": round(floor, 1), "vs_floor": round(ours / floor, 3)}


# -- drain and latency (the usual harness) ----------------------------------------------------
def phase_drain(url: str, n: int, latency_n: int) -> dict[str, Any]:
    store_url = fresh_store(url, "cbench_drain")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        subprocess.run([sys.executable, "-m", "bench", "--url", store_url, "--phases", "drain,latency", "--n", str(n),
                        "--latency-n", str(latency_n), "--quiet-wait", "0", "--retries", "0", "--out", out],
                       cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
        data = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    res = data.get("results", {})
    drain, lat = res.get("drain") or {}, res.get("latency") or {}
    keep = ("jobs_per_s", "steady_jobs_per_s", "startup_s", "cpu_s_per_1000_jobs", "peak_rss_mb", "ok")
    busy = (drain.get("machine") or {}).get("other_busy_pct")
    return {"drain": {k: drain.get(k) for k in keep} | {"other_busy_pct": busy},
            "latency": {k: lat.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "warmup_s", "ok")}
            | {"other_busy_pct": (lat.get("machine") or {}).get("other_busy_pct")},
            "errors": data.get("errors")}


# -- claim time with a large history ----------------------------------------------------------
FILL = """
INSERT INTO {s}.conveyor_jobs (id, task, queue, state, priority, payload, attempts, max_attempts, created_at,
                               run_at, started_at, finished_at, updated_at, token, result)
SELECT 'done-' || g, 'noop', 'default', 'succeeded', 0, '{{"args":[1],"kwargs":{{}}}}'::bytea, 1, 1,
       %(t)s - 86400 + g * 0.001, %(t)s - 86400 + g * 0.001, %(t)s - 86400 + g * 0.001,
       %(t)s - 86400 + g * 0.001, %(t)s - 86400 + g * 0.001, 1, '1'::bytea
FROM generate_series(1, %(n)s) AS g
"""


def _time_claims(app: Any, noop: Any, n: int, batch: int, before_claims: Any = None) -> dict[str, Any]:
    from conveyor.brokers.records import Outcome

    for start in range(0, n, 1000):
        noop.enqueue_many([(i,) for i in range(start, min(n, start + 1000))])
    if before_claims is not None:
        before_claims()
    broker = app.broker
    times: list[float] = []
    done = 0
    while True:
        t0 = time.perf_counter()
        leases = broker.fetch(["default"], batch, 60.0, "claimer")
        times.append(time.perf_counter() - t0)
        if not leases:
            times.pop()
            break
        done += len(leases)
        now = time.time()
        broker.ack([Outcome(x.job_id, x.token, "succeeded", result=b"1", started_at=now, finished_at=now)
                    for x in leases])
    ms = sorted(t * 1000 for t in times)
    return {"claims": len(ms), "jobs": done, "p50_ms": round(statistics.median(ms), 3),
            "p90_ms": round(ms[int(len(ms) * 0.9)], 3), "mean_ms": round(statistics.fmean(ms), 3)}


def phase_claim(url: str, n: int, batch: int, finished: int) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": batch, "n": n, "finished": finished}
    store_url = fresh_store(url, "cbench_claim")
    app, noop = make_app(store_url)
    out["empty"] = _time_claims(app, noop, n, batch)
    app.close()
    store_url = fresh_store(url, "cbench_claim")
    conninfo = libpq(store_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute(FILL.format(s="cbench_claim"), {"t": time.time(), "n": finished})
        out["fill_s"] = round(time.perf_counter() - t0, 1)
        app, noop = make_app(store_url)
        out["history_never_analyzed"] = _time_claims(app, noop, n, batch)
        conn.execute("ANALYZE cbench_claim.conveyor_jobs")
        out["history_stale"] = _time_claims(app, noop, n, batch)
        out["history_fresh"] = _time_claims(
            app, noop, n, batch, lambda: conn.execute("VACUUM ANALYZE cbench_claim.conveyor_jobs"))
        app.close()
    for name in ("history_never_analyzed", "history_stale", "history_fresh"):
        out[name]["vs_empty"] = round(out[name]["p50_ms"] / out["empty"]["p50_ms"], 3)
    return out


# -- the peers --------------------------------------------------------------------------------
def phase_peers(a: argparse.Namespace, rep: int) -> dict[str, Any]:
    env = dict(os.environ, CONVEYOR_PY=str(Path(sys.executable)), PEERS_PG_VENV=a.peers_venv)
    cmd = [os.path.join(a.peers_venv, "bin", "python"), "harness.py", "--libs", a.peers_libs, "--reps", "1",
           "--n", str(a.peers_n), "--lat-n", str(a.latency_n), "--finished-rows", "0",
           "--drain-timeout", str(a.peers_drain_timeout),
           "--variants", a.peers_variants, f"--suffix=-r{rep}"]
    log("peers: " + " ".join(cmd))
    with open(os.path.join(a.peers, f"harness-r{rep}.log"), "w") as logf:
        subprocess.run(cmd, cwd=a.peers, env=env, check=False, stdout=logf, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {}
    for lib in a.peers_libs.split(","):
        path = Path(a.peers, "raw", f"results-{lib}-r{rep}.json")
        if not path.exists():
            out[lib] = {"error": "no results file"}
            continue
        data = json.loads(path.read_text())
        summary = data.get("summary") or {}
        entry: dict[str, Any] = {"enqueue_jobs_per_s": summary.get("enqueue_jobs_per_s"),
                                 "bulk_jobs_per_s": summary.get("bulk_jobs_per_s"),
                                 "fatal": data.get("fatal"), "unavailable": data.get("unavailable")}
        for name, v in (summary.get("variants") or {}).items():
            entry[name] = {k: v.get(k) for k in ("drain_jobs_per_s", "steady_jobs_per_s", "lat_p50_ms", "lat_p99_ms",
                                                 "startup_s", "worker_cpu_ms_per_job", "pg_cpu_ms_per_job",
                                                 "drain_ok")}
        for key in ("bare_jobs_per_s",):
            if key in summary:
                entry[key] = summary[key]
        out[lib] = entry
    return out


# -- summary ----------------------------------------------------------------------------------
def _median_tree(runs: list[Any]) -> Any:
    """The element-wise median of a list of equally shaped JSON values (numbers only)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: _median_tree([r.get(k) for r in runs if isinstance(r, dict)]) for k in first}
    nums = [r for r in runs if isinstance(r, (int, float)) and not isinstance(r, bool)]
    if nums and len(nums) == len([r for r in runs if r is not None]):
        return round(statistics.median(nums), 3)
    return first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="postgresql://127.0.0.1:5432/test")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--phases", default="peers,enqueue,bulk,drain,claim")
    ap.add_argument("--n", type=int, default=20000, help="drain N")
    ap.add_argument("--enqueue-n", type=int, default=1000, help="single enqueues per block")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks of the enqueue and bulk phases")
    ap.add_argument("--bulk-n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--latency-n", type=int, default=500)
    ap.add_argument("--drain-options", default="async_acks=1",
                    help="comma-separated URL options: the drain phase runs again with each (empty: none)")
    ap.add_argument("--claim-n", type=int, default=20000)
    ap.add_argument("--claim-batch", type=int, default=128)
    ap.add_argument("--finished", type=int, default=1_000_000)
    ap.add_argument("--peers", default="/tmp/pgpeers/peers-pg", help="a copy of shared/bench/peers-pg")
    ap.add_argument("--peers-venv", default="/tmp/pgpeers/venv")
    ap.add_argument("--peers-libs", default="procrastinate,pgqueuer,floor,conveyor")
    ap.add_argument("--peers-variants", default=PEER_VARIANTS)
    ap.add_argument("--peers-n", type=int, default=20000)
    ap.add_argument("--peers-drain-timeout", type=int, default=300,
                    help="the harness's --drain-timeout (a peer that loses jobs would wait 900 s)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    phases = [p for p in a.phases.split(",") if p]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src"), str(ROOT / "bench")],
                   check=False, stdout=subprocess.DEVNULL)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    runs: dict[str, list[Any]] = {p: [] for p in phases}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for rep in range(a.reps):
        for phase in phases:
            log(f"rep {rep + 1}/{a.reps}: {phase}")
            t0 = time.time()
            if phase == "peers":
                res = phase_peers(a, rep)
            elif phase == "enqueue":
                res = phase_enqueue(a.url, a.enqueue_n, a.blocks)
            elif phase == "bulk":
                res = phase_bulk(a.url, a.bulk_n, a.batch, a.blocks)
            elif phase == "drain":
                res = phase_drain(a.url, a.n, a.latency_n)
                for option in [o for o in a.drain_options.split(",") if o]:
                    log(f"rep {rep + 1}/{a.reps}: drain with ?{option}")
                    res[option] = phase_drain(a.url + ("&" if "?" in a.url else "?") + option, a.n, a.latency_n)
            elif phase == "claim":
                res = phase_claim(a.url, a.claim_n, a.claim_batch, a.finished)
            else:
                raise SystemExit(f"unknown phase {phase!r}")
            res["at"], res["wall_s"] = time.strftime("%H:%M:%S", time.gmtime(t0)), round(time.time() - t0, 1)
            log(f"{phase}: {json.dumps(res)[:600]}")
            runs[phase].append(res)
            if a.out:  # what was measured so far, in case the run is stopped
                Path(a.out + ".partial").write_text(json.dumps(runs, default=str))
    result = {"command": " ".join([os.path.basename(sys.executable), "-m", "bench.postgres", *(argv or sys.argv[1:])]),
              "started": started, "git": git, "url": a.url, "reps": a.reps,
              "median": {p: _median_tree(r) for p, r in runs.items() if r}, "runs": runs}
    text = json.dumps(result, indent=1, default=str)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
