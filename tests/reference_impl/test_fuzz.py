"""Whatever a client sends, the API never answers 5xx: hypothesis against the real API."""

from __future__ import annotations

import asyncio
import json
import string

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from env.local import LocalEnvironment
from tests.helpers import wait_healthy
from tests.phone import Phone

pytestmark = pytest.mark.env

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "provider": st.sampled_from(["sharepoint", "gdrive", "", "s3"]) | st.integers(),
            # Valid names too, or nothing past the name's check would be fuzzed.
            "document": st.sampled_from(["doc-001.txt", "no-such-doc.txt"]) | st.text(max_size=600),
            "instruction": st.text(max_size=50) | st.integers(),
        }
    ).map(lambda v: json.dumps(v).encode()),
)
paths = st.sampled_from(
    [
        "/v1/requests",
        "/v1/devices",
        "/oauth/token",
        "/v1/sync",
        "/v1/requests/{id}",
        "/v1/nothing",
        "/.well-known/jwks.json",
        # Not public: the frontend answers them 404 whatever is sent.
        "/metrics",
        "/health/ready",
        "/admin/planted",
    ]
)
header_text = st.text(alphabet=string.printable.strip(), max_size=150)


@pytest.fixture(scope="module")
def fuzz_target(local_env: LocalEnvironment):
    status = wait_healthy(local_env)

    async def register() -> dict:
        async with Phone(status) as phone:
            await phone.register()
            return {"token": phone.token}

    return status, asyncio.run(register())


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=paths,
    rid=st.text(max_size=40) | st.uuids().map(str),
    body=bodies,
    key=st.none() | header_text,
    auth=st.sampled_from(["valid", "none", "garbage"]),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain"]
    ),
    since=st.none() | header_text,
)
def test_no_input_yields_a_5xx(
    fuzz_target, method, path, rid, body, key, auth, content_type, since
):
    status, creds = fuzz_target
    headers = {"Content-Type": content_type}
    if auth == "valid":
        headers["Authorization"] = f"Bearer {creds['token']}"
        # Registration needs the secret: without it its body would never be read.
        headers["X-Registration-Secret"] = status["registration_secret"]
    elif auth == "garbage":
        headers["Authorization"] = "Bearer not.a.token"
    if key is not None:
        headers["Idempotency-Key"] = key
    url_path = path.replace("{id}", aiohttp.helpers.quote(rid, safe="") or "x")
    params = {"since": since} if since is not None and path == "/v1/sync" else None

    async def call() -> tuple[int, str, str]:
        async with (
            Phone(status) as phone,
            phone.session.request(
                method, phone.base + url_path, data=body, headers=headers, params=params
            ) as r,
        ):
            return r.status, r.headers.get("Content-Type", ""), await r.text()

    code, ctype, text = asyncio.run(call())
    assert code < 500, (code, text)
    if path.startswith(("/metrics", "/health", "/admin")):
        assert code == 404, (path, code, text)
    if code >= 400:
        assert ctype.startswith("application/json"), (code, ctype, text)
