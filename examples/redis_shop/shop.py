"""Enqueue a morning's work for the shop's worker and wait for the results (run it from this folder
while ``conveyor worker tasks:app`` runs)."""

from __future__ import annotations

from tasks import app, make_preview, publish_page, send_receipt


def main() -> None:
    app.open()  # connects, loads the scripts, and logs any Redis setting that can lose jobs
    receipts = send_receipt.enqueue_many([(order, f"customer{order}@example.com") for order in range(1001, 1011)])
    # Ten edits of one page within a second: one render (the key is free again once it ran).
    pages = [publish_page.options(key="page:red-shoes").enqueue("red-shoes") for _ in range(10)]
    preview = make_preview.options(priority=5).enqueue("launch.mov", seconds=20)  # ahead of older media jobs

    print(f"{len(receipts)} receipts:", receipts[-1].result(timeout=30))
    print(f"{len({job.id for job in pages})} render(s) for 10 edits:", pages[0].result(timeout=30))
    print("preview:", preview.result(timeout=30))
    app.close()


if __name__ == "__main__":
    main()
