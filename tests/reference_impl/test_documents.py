"""A document is named by a plain file name, checked alike by the API, the storage gateway and
the provider emulators; the name is encrypted at rest, so it never shows in plaintext anywhere
else: not in stored errors, not in logs, not in spans."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from env.local import LocalEnvironment
from reference_impl import contract
from tests.helpers import poll, port_of, query, wait_healthy
from tests.phone import Phone

pytestmark = pytest.mark.env

REFUSED = [
    "",
    "../services/field-encryption.key",
    "a/b.txt",
    ".hidden",
    "-rf",
    " doc-001.txt",
    "doc-001.txt\n",
    "doc 001.txt",
    "%2e%2e",
    "doc?.txt",
    "r\u00e9sum\u00e9.txt",
    "a" * 201,
]


def test_document_must_be_a_file_name_and_the_document_says_which(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def flow() -> list[tuple[str, int, dict]]:
        async with Phone(status) as phone:
            await phone.register()
            out = []
            for name in [*REFUSED, "a" * 200, "x"]:
                code, body = await phone.submit(document=name)
                out.append((name, code, body))
            return out

    for name, code, body in asyncio.run(flow()):
        if name in REFUSED:
            assert code == 422, (name, code, body)
            assert body["detail"] == {"field": "document", "problem": contract.DOCUMENT_RULE}
        else:
            assert code == 202, (name, code, body)
    served = requests.get(
        status["urls"]["https"] + "/openapi.json", verify=status["tls_certificate"], timeout=10
    ).json()
    document = served["paths"]["/v1/requests"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]["document"]
    assert document["pattern"] == contract.DOCUMENT_PATTERN
    assert document["maxLength"] == contract.DOCUMENT_MAX_LENGTH == 200


def test_gateway_and_emulators_check_the_same_rule(local_env: LocalEnvironment):
    status = wait_healthy(local_env)
    gateway = f"http://127.0.0.1:{port_of(status, 'gateway')}/v1/documents/sharepoint/"
    emulator = f"http://127.0.0.1:{port_of(status, 'sharepoint')}/v1/files/"
    for base in (gateway, emulator):
        for name in ("..%2Fsecrets.json", quote(".hidden"), quote("a" * 201), "%C3%A9.txt"):
            resp = requests.get(base + name, timeout=10)
            assert resp.status_code == 422, (base, name, resp.text)
            assert resp.json()["detail"]["problem"] == contract.DOCUMENT_RULE
        missing = f"missing-{uuid.uuid4().hex}.txt"
        resp = requests.get(base + missing, timeout=10)
        assert resp.status_code == 404, resp.text
        assert missing not in resp.text
        assert requests.get(base + "doc-001.txt", timeout=10).status_code == 200


def test_a_missing_documents_name_appears_nowhere_in_plaintext(local_env: LocalEnvironment):
    """The request fails for good, with a clear reason; then the database rows, every service's
    log and every trace file are searched for the name."""
    status = wait_healthy(local_env)
    name = f"missing-{uuid.uuid4().hex}.txt"
    cid = uuid.uuid4().hex

    async def flow() -> dict:
        async with Phone(status) as phone:
            await phone.register()
            code, accepted = await phone.submit(document=name, headers={"X-Correlation-Id": cid})
            assert code == 202, accepted
            rid = accepted["request_id"]

            async def final() -> dict | None:
                _, body = await phone.get(rid)
                return body if body["status"] in ("failed", "dead_lettered") else None

            return await poll_async(final, 60, "the request failed")

    failed = asyncio.run(flow())
    assert failed["status"] == "failed", failed
    assert "not found" in failed["error"]
    run_dir = Path(status["run_dir"])

    def gateway_spans() -> list[dict] | None:
        path = run_dir / "traces" / "gateway.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        spans = [json.loads(line) for line in lines if f"0x{cid}" in line]
        return spans or None

    # The gateway saw the request (spans are exported in batches, every 5 s): its span is there,
    # naming the route, not the path.
    spans = poll(gateway_spans, 30, "the gateway's span of the fetch")
    url = status["urls"]["write"]
    for table in ("requests", "jobs", "dead_letters", "events", "periodic_runs"):
        rows = query(url, f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s", (f"%{name}%",))
        assert rows == [(0,)], f"the document name in plaintext in {table}"
    leaks = [
        str(path)
        for folder in ("logs", "traces")
        for path in (run_dir / folder).glob("*")
        if path.is_file() and name.encode() in path.read_bytes()
    ]
    assert leaks == [], f"the document name in plaintext in {leaks}"
    assert spans[0]["attributes"]["http.route"] == "/v1/documents/{provider}/{name}"


async def poll_async(check, timeout_s: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result is not None:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.2)
