"""Conveyor's benchmark harness: ``python -m bench --url sqlite:///PATH`` prints one JSON object.

See ``bench/README.md`` for what each figure means.
"""
