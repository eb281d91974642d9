"""Agent worker: claims jobs, fetches the document, calls the LLM, stores the result, notifies.

Exactly-once effect with at-least-once execution: a claim increments the job's `attempts`, and
completion deletes the job only if it still carries *this* claim (same holder, same attempt).
A worker killed mid-job leaves its claim to expire (the visibility timeout); another worker
claims it again, and the first one, were it only slow, can no longer complete it. The response
and its event are written in the same transaction as the job's deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.exceptions import InvalidTag
from prometheus_client import Counter, Gauge

from reference_impl import contract, observability
from reference_impl.crypto import FieldCipher
from reference_impl.errors import error_middleware
from reference_impl.planted import PLANTED
from reference_impl.schema import ensure_schema
from reference_impl.settings import ServiceSettings
from reference_impl.stores import (
    NOTIFY_CHANNEL,
    CacheCluster,
    create_pool,
    create_redis,
    publish_in_cluster,
    redis_or_none,
)

log = logging.getLogger("cw.worker")

SETTINGS = web.AppKey("settings", ServiceSettings)
STATE = web.AppKey("state", object)

CONCURRENCY = 4
IDLE_POLL_S = 0.2
#: The golden ratio's fractional part: worker k's polls sit at k * PHI (mod 1) of the gap between
#: its loops' polls, so any number of workers spreads out without knowing how many there are.
PHI = (5**0.5 - 1) / 2
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
DRAIN_TIMEOUT_S = 20.0
RESPONSE_TTL_S = 1800
#: Errors of the database connection itself: a job cannot even record its failure then, so they
#: end the cycle (the claim expires and the job is retried) instead of failing the job.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
#: No job may run longer than this (fetch, three LLM tries with their waits, completion): a call
#: that hangs despite its own timeout fails the attempt instead of holding the loop (and its
#: claim, which the keeper would otherwise extend for ever).
JOB_DEADLINE_S = 90.0


class PermanentError(Exception):
    """Retrying cannot help (the document does not exist): the request fails at once."""


class TransientError(Exception):
    """Retrying later may help: the job goes back to the queue with backoff, and not sooner
    than `retry_after_s` (what refused it knows when trying again can help)."""

    def __init__(self, reason: str, retry_after_s: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


def backoff_s(attempt: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    step: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


def poll_offset_s(worker: str, index: int) -> float:
    """Where in each IDLE_POLL_S period (on the wall clock, which every worker shares) claim loop
    `index` of `worker` polls when idle. A job waits for the next poll of any loop, so the polls
    must be spread: each loop polling IDLE_POLL_S after its own last idle claim left them in
    clumps (loops that start together, or finish jobs together, stay in phase), and a job
    arriving after a clump waited most of the period: 80-100 ms at the 90th percentile where
    twelve evenly spread loops would leave it at most 17. A worker's loops sit a CONCURRENCY-th
    of the period apart; worker k's comb is shifted by k * PHI of that gap (a low-discrepancy
    sequence: for 1 to 10 workers the largest gap between polls is at most 1.66 times an even
    spacing's, with no need to know how many workers there are). Any other name (a pod's, whose
    random suffix may end in digits too) is placed by its hash: spread at random, not evenly."""
    numbered = re.fullmatch(r"[a-z]+([0-9]{1,6})", worker)
    k = int(numbered.group(1)) if numbered else zlib.crc32(worker.encode())
    gap = IDLE_POLL_S / CONCURRENCY
    return index * gap + (k * PHI % 1.0) * gap


def until_poll_s(worker: str, index: int, now: float) -> float:
    """Seconds from `now` (wall clock) to the loop's next poll slot, in (0, IDLE_POLL_S]."""
    return IDLE_POLL_S - (now - poll_offset_s(worker, index)) % IDLE_POLL_S


def retry_delay_s(attempt: int, not_before_s: float = 0.0) -> float:
    """How long a failed attempt waits in the queue: its backoff, or longer when what refused
    it (an open circuit breaker) can say when trying again could help."""
    return max(backoff_s(attempt), not_before_s)


def llm_content(raw: bytes) -> str | None:
    """The assistant's text from an OpenAI-style chat completion; None when the answer is not
    one (not JSON, no choices, no message, content not a string)."""
    try:
        body = json.loads(raw)
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class CircuitBreaker:
    """Open after `threshold` consecutive failures; one trial call after `cooldown_s`."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 10.0) -> None:
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        #: What the last failed call met, for the reason of jobs refused while open.
        self.last = "none yet"

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def remaining_s(self) -> float:
        """How long the breaker stays open: 0 unless it is."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (time.monotonic() - self.opened_at))

    def record(self, ok: bool) -> None:
        if ok:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold or self.state == "half_open":
            self.opened_at = time.monotonic()


@dataclass
class Job:
    job_id: int
    device_id: uuid.UUID
    request_id: uuid.UUID
    correlation_id: str
    attempts: int
    max_attempts: int
    #: The request's provider and sealed fields, read with the claim; None when its row is gone.
    fields: tuple[str, bytes, bytes] | None = None


JOB_COLUMNS = ("job_id", "device_id", "request_id", "correlation_id", "attempts", "max_attempts")

#: `claim`: the job, its request marked processing, and the request's fields. The final SELECT
#: reads `requests` as the statement began (a CTE's update is not visible to it), which is all
#: it needs: the fields it reads are written once, at submit.
CLAIM_SQL = """
WITH claimed AS (
    UPDATE jobs SET attempts = attempts + 1, claimed_by = $1, claimed_at = now(),
        visible_at = now() + make_interval(secs => $2)
    WHERE job_id = (SELECT job_id FROM jobs WHERE visible_at <= now()
        ORDER BY visible_at, job_id FOR UPDATE SKIP LOCKED LIMIT 1)
    RETURNING job_id, device_id, request_id, correlation_id, attempts, max_attempts
), marked AS (
    UPDATE requests r SET status = 'processing', updated_at = now()
    FROM claimed c
    WHERE r.device_id = c.device_id AND r.request_id = c.request_id AND r.status = 'queued'
)
SELECT c.*, r.provider, r.document_enc, r.instruction_enc
FROM claimed c LEFT JOIN requests r
    ON r.device_id = c.device_id AND r.request_id = c.request_id
"""

#: `complete`: the fence (the job deleted only while it carries this claim: $1-$3), then the
#: response ($4) and, unless `$6` is false, the completion's event ($5), all or nothing.
COMPLETE_SQL = """
WITH finished AS (
    DELETE FROM jobs WHERE job_id = $1 AND claimed_by = $2 AND attempts = $3
    RETURNING device_id, request_id
), completed AS (
    UPDATE requests r SET status = 'completed', response_enc = $4, error = NULL,
        updated_at = now()
    FROM finished f WHERE r.device_id = f.device_id AND r.request_id = f.request_id
), event AS (
    INSERT INTO events (device_id, request_id, type, payload)
    SELECT device_id, request_id, 'completed', $5::jsonb FROM finished WHERE $6::bool
    RETURNING event_id
)
SELECT EXISTS (SELECT FROM finished) AS finished, (SELECT event_id FROM event) AS event_id
"""


#: After a completion statement that raised while it swallowed its event: did it commit all the
#: same (its reply lost with the connection, as a primary killed right after the synchronous
#: standby confirmed the commit leaves it)? Two statements, in this order:
#: - the job's row with this claim, locked (FOR UPDATE): a completion still running on the server
#:   (its client gone, or waiting for the standby) holds that row's lock until it ends, so this
#:   waits for it; the row still there means it did not commit, and now cannot;
#: - the row gone, the request's response is the very ciphertext this attempt sent (a random
#:   nonce makes it one of a kind), read afterwards, with a snapshot that sees the commit: then
#:   this attempt's statement committed, and its event was swallowed. Another attempt that took
#:   the job over and completed it left its own response.
SWALLOW_CLAIM_HELD_SQL = (
    "SELECT true FROM jobs WHERE job_id = $1 AND claimed_by = $2 AND attempts = $3 FOR UPDATE"
)
SWALLOW_RESPONSE_SQL = (
    "SELECT EXISTS (SELECT FROM requests WHERE device_id = $1 AND request_id = $2"
    " AND status = 'completed' AND response_enc = $3)"
)
#: How long that question is asked for: past a failover of the standard profile (14 s worst).
SETTLE_SWALLOW_S = 20.0


class WorkerState:
    def __init__(self, app: web.Application, settings: ServiceSettings) -> None:
        self.app = app
        self.settings = settings
        self.cipher = FieldCipher(settings.field_key_path)
        self.breaker = CircuitBreaker()
        self.stopping = asyncio.Event()
        self.in_flight = 0
        registry = app[observability.METRICS_KEY].registry
        self.jobs = Counter("cw_jobs_total", "Jobs by outcome", ["outcome"], registry=registry)
        self.llm_calls = Counter(
            "cw_llm_calls_total", "LLM calls by outcome", ["outcome"], registry=registry
        )
        self.queue_depth = Gauge("cw_queue_depth", "Jobs waiting or in flight", registry=registry)
        self.oldest_age = Gauge(
            "cw_queue_oldest_age_seconds", "Age of the oldest job", registry=registry
        )
        self.breaker_open = Gauge(
            "cw_llm_circuit_open", "1 while the LLM breaker is open", registry=registry
        )
        self.loop_errors = Counter(
            "cw_loop_errors_total",
            "Loop cycles that ended in an error (and went on)",
            ["loop"],
            registry=registry,
        )
        # What "kill a worker mid-job" waits for before it kills.
        self.jobs_in_flight = Gauge(
            "cw_jobs_in_flight", "Jobs this worker is processing now", registry=registry
        )
        self.pool: asyncpg.Pool
        self.redis: CacheCluster
        self.http: aiohttp.ClientSession

    # ---- the queue -------------------------------------------------------------------------

    async def claim(self) -> Job | None:
        """The next visible job, claimed, its request marked processing and its fields read:
        one statement, so two round trips through pgBouncer (its unnamed statements) and no
        BEGIN/COMMIT, where it took eight. Its
        locks (jobs, then requests) are a running worker's order; the schema's DDL, which took
        them the other way, runs only when the schema changed (`ensure_schema`)."""
        row = await self.pool.fetchrow(
            CLAIM_SQL, self.settings.name, self.settings.visibility_timeout_s
        )
        if row is None:
            return None
        fields = None
        if row["provider"] is not None:
            fields = (row["provider"], bytes(row["document_enc"]), bytes(row["instruction_enc"]))
        return Job(**{k: row[k] for k in JOB_COLUMNS}, fields=fields)

    async def _finish(self, conn: asyncpg.Connection, job: Job) -> bool:
        """Delete the job if it still carries this claim (the fence); False when it does not."""
        return (
            await conn.fetchval(
                "DELETE FROM jobs WHERE job_id = $1 AND claimed_by = $2 AND attempts = $3"
                " RETURNING true",
                job.job_id,
                self.settings.name,
                job.attempts,
            )
            is not None
        )

    async def _event(
        self, conn: asyncpg.Connection, job: Job, kind: str, status: str
    ) -> dict[str, Any]:
        payload = {"status": status}
        event_id = await conn.fetchval(
            "INSERT INTO events (device_id, request_id, type, payload) VALUES ($1, $2, $3, $4)"
            " RETURNING event_id",
            job.device_id,
            job.request_id,
            kind,
            json.dumps(payload),
        )
        return self._event_of(event_id, job, kind, payload)

    @staticmethod
    def _event_of(event_id: int, job: Job, kind: str, payload: dict[str, str]) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "type": kind,
            "request_id": str(job.request_id),
            "device_id": str(job.device_id),
            **payload,
        }

    async def _swallow_committed(self, job: Job, sent: bytes) -> bool:
        """Whether a swallowing completion whose statement raised committed all the same
        (`SWALLOW_CLAIM_HELD_SQL`, then `SWALLOW_RESPONSE_SQL`; `sent`: the response's
        ciphertext it sent), asked of the primary until it answers, each attempt and the whole
        bounded by SETTLE_SWALLOW_S. False when it cannot tell (no answer in time, or the worker
        stopping): the record may then under-count by one."""
        deadline = time.monotonic() + SETTLE_SWALLOW_S
        while not self.stopping.is_set():  # a worker shutting down does not wait for it
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(min(3.0, left)):  # the pool's acquire included
                    held = await self.pool.fetchval(
                        SWALLOW_CLAIM_HELD_SQL, job.job_id, self.settings.name, job.attempts
                    )
                    if held:
                        return False
                    return bool(
                        await self.pool.fetchval(
                            SWALLOW_RESPONSE_SQL, job.device_id, job.request_id, sent
                        )
                    )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.info("job %s: asking whether its completion committed: %s", job.job_id, exc)
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        log.warning("job %s: whether its completion committed is unknown", job.job_id)
        return False

    async def complete(self, job: Job, response: str) -> dict[str, Any] | None:
        """Fenced completion in one statement: the job deleted if it still carries this claim,
        the response stored, the completion's event inserted. None when another claim took
        the job over. With the planted fault `swallow_notifications` armed (test environments
        only), no event is stored or published: the phone never hears of it (an empty event,
        so the job still counts as completed)."""
        planted = self.app[PLANTED]
        epoch = planted.epoch
        swallow = planted.take("swallow_notifications", str(job.request_id))
        payload = {"status": "completed"}
        finished = swallowed = False
        sent = self.cipher.encrypt(response, f"{job.device_id}/{job.request_id}/response")
        try:
            row = await self.pool.fetchrow(
                COMPLETE_SQL,
                job.job_id,
                self.settings.name,
                job.attempts,
                sent,
                json.dumps(payload),
                not swallow,
            )
            finished = bool(row["finished"])
            swallowed = swallow and finished
        except Exception:
            # A statement that raised may have committed all the same: only the database can
            # say whether the event was swallowed. (The error still goes to the job loop.)
            swallowed = swallow and await self._swallow_committed(job, sent)
            raise
        finally:
            # Fenced or not committed: nothing was swallowed, and the record must not count it.
            # Cancelled (the job's deadline, the worker stopping): not known, and counted so.
            if swallow and not swallowed:
                planted.give_back("swallow_notifications", str(job.request_id), epoch)
        if not finished:
            log.warning("job %s was claimed again meanwhile: not completing", job.job_id)
            return None
        event = {} if swallow else self._event_of(row["event_id"], job, "completed", payload)
        key = f"resp:{job.request_id}"
        sealed = self.cipher.seal(response, key)  # Redis holds ciphertext only
        await redis_or_none(
            self.redis,
            "response cache",
            lambda: self.redis.set(key, sealed, ex=RESPONSE_TTL_S),
            # Off the phone's path: room for a slow node, unlike a request's cache lookups.
            deadline_s=2.0,
        )
        return event

    async def fail(
        self, job: Job, error: str, permanent: bool, not_before_s: float = 0.0
    ) -> dict[str, Any] | None:
        """Back to the queue with backoff (`not_before_s` at least), or out of it (failed, or
        dead-lettered)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not permanent and job.attempts < job.max_attempts:
                await conn.execute(
                    "UPDATE jobs SET visible_at = now() + make_interval(secs => $4),"
                    " claimed_by = NULL, last_error = $5"
                    " WHERE job_id = $1 AND claimed_by = $2 AND attempts = $3",
                    job.job_id,
                    self.settings.name,
                    job.attempts,
                    retry_delay_s(job.attempts, not_before_s),
                    error[:500],
                )
                return None
            if not await self._finish(conn, job):
                return None
            status = "failed" if permanent else "dead_lettered"
            if not permanent:
                await conn.execute(
                    "INSERT INTO dead_letters (request_id, device_id, attempts, last_error)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
                    job.request_id,
                    job.device_id,
                    job.attempts,
                    error[:500],
                )
            await conn.execute(
                "UPDATE requests SET status = $3, error = $4, updated_at = now()"
                " WHERE device_id = $1 AND request_id = $2",
                job.device_id,
                job.request_id,
                status,
                error[:500],
            )
            return await self._event(conn, job, status, status)

    async def publish(self, event: dict[str, Any]) -> None:
        """Fan-out is best effort: a phone that misses it catches up from the event log."""
        await redis_or_none(
            self.redis,
            "notify",
            lambda: publish_in_cluster(self.redis, NOTIFY_CHANNEL, json.dumps(event)),
        )

    # ---- the work --------------------------------------------------------------------------

    def open_request(self, job: Job) -> tuple[str, str, str]:
        """The request's provider, document name and instruction, decrypted from what the
        claim read."""
        if job.fields is None:  # the claim found no request row
            raise PermanentError("request row missing")
        provider, document_enc, instruction_enc = job.fields
        ctx = f"{job.device_id}/{job.request_id}"
        try:
            return (
                provider,
                self.cipher.decrypt(document_enc, ctx + "/document"),
                self.cipher.decrypt(instruction_enc, ctx + "/instruction"),
            )
        except (InvalidTag, ValueError, TypeError):
            # Retrying cannot help: the key that sealed these fields is not ours (or they were
            # altered). The reason names no field content: it is stored in plaintext.
            raise PermanentError("request fields cannot be decrypted with this key") from None

    async def fetch_document(self, provider: str, name: str) -> str:
        url = contract.url_of(self.settings.gateway_url, "v1", "documents", provider, name)
        headers = {"X-Correlation-Id": observability.correlation_id.get()}
        try:
            async with self.http.get(url, headers=headers) as resp:
                # The name is encrypted at rest: errors (stored, logged) never repeat it.
                if resp.status == 404:
                    raise PermanentError(f"document not found at {provider}")
                if resp.status == 422:
                    raise PermanentError("document name refused by the storage gateway")
                if resp.status != 200:
                    raise TransientError(f"storage gateway answered {resp.status}")
                body = await resp.json()
                content = body.get("content") if isinstance(body, dict) else None
                if not isinstance(content, str):
                    raise TransientError("storage gateway answered malformed JSON (no content)")
                return content
        except ValueError:  # JSON that does not parse
            raise TransientError("storage gateway answered malformed JSON") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"storage gateway unreachable: {type(exc).__name__}") from exc

    async def call_llm(self, document: str, instruction: str) -> str:
        """Up to 3 tries with backoff, honouring Retry-After, behind the circuit breaker."""
        payload = {
            "model": "stub-1",
            "messages": [
                {"role": "system", "content": "You process documents for CloudWatcher."},
                {"role": "user", "content": f"{instruction}\n\n---\n{document[:8000]}"},
            ],
        }
        last = "no attempt"
        for attempt in range(1, 4):
            if not self.breaker.allow():
                self.llm_calls.labels("circuit_open").inc()
                # Back no sooner than the breaker lets a trial call through: five attempts
                # with backoff (0.25 + 0.5 + 1 + 2 s at least) fit inside one cooldown, and a
                # job refused each time was dead-lettered without one call to the LLM.
                raise TransientError(
                    f"LLM circuit open (last failure: {self.breaker.last})",
                    retry_after_s=self.breaker.remaining_s(),
                )
            try:
                content, outcome, wait = await self._llm_attempt(payload, attempt)
            finally:
                self.breaker_open.set(1 if self.breaker.state == "open" else 0)
            if content is not None:
                return content
            last = self.breaker.last = outcome
            if attempt < 3:
                await asyncio.sleep(min(wait, 5.0))
        raise TransientError(last)

    async def _llm_attempt(
        self, payload: dict[str, Any], attempt: int
    ) -> tuple[str | None, str, float]:
        """One call: (content, "", 0) on success, else (None, what went wrong, how long to
        wait before the next try). An answer of the wrong shape is a failed try, like a 5xx."""
        wait = backoff_s(attempt)
        try:
            async with self.http.post(
                f"{self.settings.llm_url}/v1/chat/completions",
                json=payload,
                timeout=aiohttp.ClientTimeout(total=15, connect=1),
                headers={"X-Correlation-Id": observability.correlation_id.get()},
            ) as resp:
                if resp.status == 200:
                    content = llm_content(await resp.read())
                    self.breaker.record(content is not None)
                    self.llm_calls.labels("ok" if content is not None else "malformed").inc()
                    return content, "LLM answered malformed JSON", wait
                self.breaker.record(False)
                self.llm_calls.labels(str(resp.status)).inc()
                if resp.status == 429:
                    with contextlib.suppress(ValueError):
                        wait = max(wait, float(resp.headers.get("Retry-After", "0")))
                return None, f"LLM answered {resp.status}", wait
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.breaker.record(False)
            self.llm_calls.labels("network").inc()
            return None, f"LLM unreachable: {type(exc).__name__}", wait

    async def keep_claim(self, job: Job, loop: str) -> None:
        """Extend the claim's visibility while the job runs, fenced like completion.

        A live worker, however slow its LLM, keeps its job; a dead one stops extending, and the
        job reappears one visibility timeout later. Each extension also counts as progress of
        the loop running the job (liveness): a job may take longer than the staleness limit,
        but never longer than JOB_DEADLINE_S.
        """
        every = self.settings.visibility_timeout_s / 3
        while True:
            await asyncio.sleep(every)
            observability.tick(self.app, loop)
            try:
                await self.pool.execute(
                    "UPDATE jobs SET visible_at = now() + make_interval(secs => $4)"
                    " WHERE job_id = $1 AND claimed_by = $2 AND attempts = $3",
                    job.job_id,
                    self.settings.name,
                    job.attempts,
                    self.settings.visibility_timeout_s,
                )
            except Exception as exc:  # the next extension may work; the job goes on either way
                log.warning("job %s: claim not extended: %r", job.job_id, exc)

    async def process(self, job: Job, loop: str) -> None:
        keeper = asyncio.create_task(self.keep_claim(job, loop))
        self.jobs_in_flight.inc()
        try:
            await self._process(job)
        finally:
            self.jobs_in_flight.dec()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _work(self, job: Job) -> dict[str, Any] | None:
        """The job itself: the completion event, or None when another claim took it over."""
        if job.attempts > job.max_attempts:
            # Claimed again and again by workers that died mid-job.
            raise TransientError(f"gave up after {job.max_attempts} attempts")
        provider, document, instruction = self.open_request(job)
        text = await self.fetch_document(provider, document)
        response = await self.call_llm(text, instruction)
        return await self.complete(job, response)

    async def _attempt(self, job: Job) -> tuple[dict[str, Any] | None, str]:
        """Run the job and settle it: (event to publish, outcome). Whatever goes wrong inside
        the job fails this attempt (retried with backoff, then dead-lettered) with a reason
        that names no request content (a database error too, when the database can record it);
        only a database that cannot record it propagates."""
        deadline = asyncio.timeout(JOB_DEADLINE_S)
        not_before_s = 0.0
        try:
            async with deadline:
                event = await self._work(job)
            return event, "completed" if event is not None else "fenced"
        except PermanentError as exc:
            return await self.fail(job, str(exc), permanent=True), "failed"
        except TransientError as exc:
            reason = str(exc)
            not_before_s = exc.retry_after_s
        except TimeoutError:
            if not deadline.expired():
                raise  # a database call timed out: the loop's business
            reason = f"job exceeded its {JOB_DEADLINE_S:g} s deadline"
        except DB_ERRORS as exc:
            # Recorded when the database can take it (one connection dropped mid-job, the pool
            # has others): the attempt retries with backoff and says why. When it cannot, the
            # claim expires and another attempt runs: the loop's business.
            reason = f"database error in the job: {type(exc).__name__}"
            try:
                event = await self.fail(job, reason, permanent=False)
            except DB_ERRORS:
                raise exc from None
            log.info("job %s attempt %d: %s", job.job_id, job.attempts, reason)
            return event, "dead_lettered" if event else "retry"
        except Exception as exc:
            # A bug, or an answer no branch foresaw: one job fails, never the worker.
            # Where, not what: the message may quote the request's content.
            log.error(
                "job %s attempt %d: unexpected %s",
                job.job_id,
                job.attempts,
                observability.frames_only(exc),
            )
            reason = f"unexpected {type(exc).__name__} in the worker"
        log.info("job %s attempt %d: %s", job.job_id, job.attempts, reason)
        event = await self.fail(job, reason, permanent=False, not_before_s=not_before_s)
        return event, "dead_lettered" if event else "retry"

    async def _process(self, job: Job) -> None:
        token = observability.correlation_id.set(job.correlation_id)
        tracer = self.app[observability.TRACER_KEY]
        try:
            with tracer.span("process_job", job_id=job.job_id, attempt=job.attempts):
                event, outcome = await self._attempt(job)
            self.jobs.labels(outcome).inc()
            if event:
                await self.publish(event)
                log.info("job %s: %s", job.job_id, outcome)
        finally:
            observability.correlation_id.reset(token)

    async def run_cycle(self, loop: str) -> str:
        """Claim and process one job; say what happened."""
        job = await self.claim()
        if job is None:
            return "idle"
        self.in_flight += 1
        try:
            await self.process(job, loop)
        finally:
            self.in_flight -= 1
        return "processed"

    async def loop(self, index: int) -> None:
        """Claim loop `claim<index>`: survives whatever one cycle raises (habit 11)."""
        name = f"claim{index}"
        planted = self.app[PLANTED]
        while not self.stopping.is_set():
            await planted.wedge_point(name)
            try:
                outcome = await self.run_cycle(name)
            except DB_ERRORS as exc:
                log.warning("%s: database unavailable: %r", name, exc)
                outcome = "error"
            except Exception:
                log.exception("%s: unexpected error; the loop goes on", name)
                outcome = "error"
            if outcome == "error":
                self.loop_errors.labels(name).inc()
            observability.tick(self.app, name)
            if outcome != "processed":
                with contextlib.suppress(TimeoutError):
                    wait_s = until_poll_s(self.settings.name, index, time.time())
                    await asyncio.wait_for(self.stopping.wait(), wait_s)

    async def watch_queue(self) -> None:
        while not self.stopping.is_set():
            try:
                depth, age = await self.pool.fetchrow(
                    "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)"
                    " FROM jobs"
                )
                self.queue_depth.set(depth)
                self.oldest_age.set(float(age))
            except Exception as exc:  # metrics only: the next cycle tries again
                log.warning("queue metrics: %r", exc)
                self.loop_errors.labels("queue_metrics").inc()
            observability.tick(self.app, "queue_metrics")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 2.0)


async def _run(app: web.Application) -> AsyncIterator[None]:
    state: WorkerState = app[STATE]  # type: ignore[assignment]
    settings = app[SETTINGS]
    # A connection per claim loop, one per claim keeper, and one for the queue metrics.
    state.pool = await create_pool(
        settings.pg_write_url, max_size=2 * CONCURRENCY + 2, ca_file=settings.tls_ca_file
    )
    await ensure_schema(state.pool)
    state.redis = create_redis(settings)
    state.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20, connect=1))

    async def pg() -> bool:
        return bool(await state.pool.fetchval("SELECT 1", timeout=2) == 1)

    app[observability.READY_CHECKS_KEY]["postgres"] = pg
    tasks = [observability.supervise(app, state.loop(i), f"claim{i}") for i in range(CONCURRENCY)]
    tasks.append(observability.supervise(app, state.watch_queue(), "queue_metrics"))
    yield
    # SIGTERM: claim nothing new, let jobs in flight finish (bounded), then go.
    state.stopping.set()
    log.info("draining: %d job(s) in flight", state.in_flight)
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    await state.http.close()
    await state.redis.aclose()
    await state.pool.close()


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    observability.install(app, settings).declare("redis_response_ttl", RESPONSE_TTL_S)
    app[STATE] = WorkerState(app, settings)
    app.cleanup_ctx.append(_run)
    return app
