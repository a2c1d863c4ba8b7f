"""The worker's start-up cost: ``conveyor worker`` must not import the web stack."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_does_not_import_the_web_stack_until_the_web_command_runs() -> None:
    code = ("import sys, conveyor.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('werkzeug', 'jinja2', 'waitress', 'prometheus_client') or m.startswith('conveyor.web')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
