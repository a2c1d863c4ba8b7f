"""A ten-line Conveyor app: run a worker with `conveyor worker tasks:app` in this folder."""

from conveyor import Conveyor, current_job

app = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db in the current folder


@app.task(retries=2)
def resize(path: str, width: int = 800) -> dict:
    current_job().progress(0.5, "resizing")
    return {"path": path, "width": width}
