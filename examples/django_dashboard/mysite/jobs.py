"""The project's Conveyor app and tasks (workers run ``conveyor worker mysite.jobs:jobs``)."""

from conveyor import Conveyor

jobs = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db


@jobs.task
def send_welcome(email: str) -> str:
    return f"sent to {email}"
