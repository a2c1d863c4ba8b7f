"""The shop's jobs, kept in the shop's own PostgreSQL database (schema ``jobs``, beside its tables).

Run from this folder: ``conveyor migrate tasks:app`` once, then ``conveyor worker tasks:app``.
"""

from __future__ import annotations

import os

from conveyor import Conveyor, current_job

#: The shop's database; Conveyor's tables go to the schema "jobs" of the same database.
DATABASE = os.environ.get("SHOP_DATABASE", "postgresql://127.0.0.1:5432/test")
app = Conveyor(os.environ.get("CONVEYOR_URL", f"{DATABASE}?schema=jobs"))


@app.task(retries=3)
def send_receipt(order_id: int) -> str:
    """Send the receipt once: the order is marked in the same transaction that records the job's
    success, so a crash before the commit sends it again and a crash after never does."""
    with current_job().transaction() as conn:
        row = conn.execute("UPDATE shop_orders SET receipt_sent = true WHERE id = %s AND NOT receipt_sent "
                           "RETURNING email", (order_id,)).fetchone()
    return f"receipt of order {order_id} sent to {row[0]}" if row else f"order {order_id}: already sent"
