"""The one loader of named blocks, for the SQL stores' queries and the Redis scripts."""

from __future__ import annotations

import pytest

from conveyor.brokers.named import named_blocks, read_blocks


def test_blocks_run_from_their_name_line_to_the_next_and_the_opening_comment_is_no_block() -> None:
    text = "-- the file's comment\n\n-- name: first\nSELECT 1\n\n-- name: second\n-- its comment\nSELECT 2;\n"
    assert named_blocks(text) == {"first": "SELECT 1", "second": "-- its comment\nSELECT 2;"}


def test_a_name_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="'a' is named twice"):
        named_blocks("-- name: a\nx\n-- name: a\ny\n")


def test_resource_files_are_merged_in_order_and_a_name_in_two_files_is_an_error() -> None:
    blocks = read_blocks("conveyor.brokers", "sqlite_schema.sql", "sqlite_queries.sql")
    assert next(iter(blocks)) == "schema" and "insert" in blocks
    with pytest.raises(ValueError, match=r"'schema' of conveyor\.brokers/sqlite_schema\.sql is named before"):
        read_blocks("conveyor.brokers", "sqlite_schema.sql", "sqlite_schema.sql")


def test_scripts_in_a_subfolder_are_read() -> None:
    pytest.importorskip("redis")
    assert "fetch" in read_blocks("conveyor.brokers.redis", "lua/fetch.lua")
