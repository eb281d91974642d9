"""The schema's DDL against what `ensure_schema` locks before running it."""

from __future__ import annotations

import re

from reference_impl import schema


def test_every_table_the_ddl_names_is_locked_before_it_runs() -> None:
    """A table the DDL touches but `TABLES` misses would be locked mid-DDL, in the DDL's order,
    which is what deadlocked with running services."""
    named = set()
    for statement in schema.DDL:
        for pattern in (
            r"CREATE TABLE IF NOT EXISTS (\w+) \(",
            r"PARTITION OF (\w+)",
            r"\bON (?:ONLY )?(\w+)",
            r"REFERENCES (\w+)",
            r"ALTER TABLE (\w+)",
        ):
            named.update(re.findall(pattern, statement))
    assert named, "the patterns found no table: they no longer match the DDL"
    assert named == set(schema.TABLES)


def test_the_check_of_an_applied_schema_looks_for_every_relation_the_ddl_makes() -> None:
    """A relation the DDL makes but the check misses would stay dropped once dropped."""
    made = set()
    for statement in schema.DDL:
        made.update(
            re.findall(r"CREATE (?:UNIQUE )?(?:TABLE|INDEX)\s+IF NOT EXISTS\s+(\w+)", statement)
        )
    assert set(schema.TABLES) <= made
    assert {f"requests_p{i}" for i in range(schema.PARTITIONS)} <= made
    assert set(schema.RELATIONS) == made
    # Every CREATE is looked for: a form the pattern does not read (CONCURRENTLY, a view) would
    # be left out of the check, and one it misreads would run the DDL at every start.
    creates = [x for x in schema.DDL if x.lstrip().upper().startswith("CREATE")]
    assert len(schema.RELATIONS) == len(creates)
