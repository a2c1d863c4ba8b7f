"""Orders and their receipt jobs, written in one transaction: a rolled-back order never sends a
receipt, a committed one always does (run from this folder while ``conveyor worker tasks:app`` runs).

Three ways in: plain psycopg, a Flask-SQLAlchemy request, and (see docs/brokers/postgres.md) Django.
"""

from __future__ import annotations

import psycopg
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from tasks import DATABASE, app, send_receipt

SCHEMA = """CREATE TABLE IF NOT EXISTS shop_orders (
    id int PRIMARY KEY, email text NOT NULL, receipt_sent boolean NOT NULL DEFAULT false)"""


def with_psycopg() -> list[str]:
    """A committed order gets its receipt; a rolled-back one leaves no order and no job."""
    with psycopg.connect(DATABASE) as conn:
        conn.execute(SCHEMA)
        conn.execute("DELETE FROM shop_orders")
        conn.commit()
        conn.execute("INSERT INTO shop_orders (id, email) VALUES (1, 'ann@example.com')")
        kept = send_receipt.options(connection=conn).enqueue(1)
        conn.commit()  # the order and its job, together; the worker is woken now
        conn.execute("INSERT INTO shop_orders (id, email) VALUES (2, 'bob@example.com')")
        dropped = send_receipt.options(connection=conn).enqueue(2)
        conn.rollback()  # neither the order nor its job
    gone = "no job" if app.store.get(dropped.id) is None else "a job!"
    return [kept.result(timeout=30), f"rolled-back order 2: {gone}"]


def with_flask_sqlalchemy() -> str:
    web = Flask(__name__)
    web.config["SQLALCHEMY_DATABASE_URI"] = DATABASE.replace("postgresql://", "postgresql+psycopg://")
    db = SQLAlchemy(web)

    @web.post("/orders/<int:order_id>")
    def place_order(order_id: int) -> dict[str, str]:
        db.session.execute(text("INSERT INTO shop_orders (id, email) VALUES (:id, :email)"),
                           {"id": order_id, "email": f"customer{order_id}@example.com"})
        job = send_receipt.options(connection=db.session).enqueue(order_id)
        db.session.commit()
        return {"job": job.id}

    with web.test_client() as client:
        job_id = client.post("/orders/3").get_json()["job"]
    with web.app_context():
        db.engine.dispose()
    return str(app.get_job(job_id).result(timeout=30))


if __name__ == "__main__":
    app.open()
    for line in [*with_psycopg(), with_flask_sqlalchemy()]:
        print(line)
    app.close()
