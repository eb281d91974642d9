"""Helpers shared by the environment tests: polling with deadlines, never sleeping blindly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from env.process import wait_until
from experiments.pg_failover import pg_members, wait_healthy

T = TypeVar("T")

__all__ = ["members", "poll", "primary_of", "query", "wait_healthy"]

members = pg_members


def primary_of(status: dict[str, Any]) -> str:
    primary = [name for name, m in members(status).items() if m["role"] == "primary"]
    assert len(primary) == 1, f"expected one primary, got {primary}"
    return primary[0]


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def poll(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    return wait_until(check, timeout_s, what, interval_s)
