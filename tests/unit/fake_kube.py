"""A fake Kubernetes API server on 127.0.0.1 for the kubernetes runtime's tests: the one mock
the project allows (no API server can run here). It replays recorded API responses (the JSON
files of `kube_fixtures/`, shaped as the API server answers) and records every call, so a test
asserts what the real kubernetes client and chaosk8s asked: methods, paths, label selectors,
bodies, how many times a wait polled.

Each route (method and path, the query aside) has a queue of answers: each call takes the next,
and the last one answers every later call. A list answered to a call with a `labelSelector`
(equality, `!=`, `in (...)`, `notin (...)`, `key`, `!key`) or a `fieldSelector`
(`spec.nodeName=`, `metadata.name=`) holds only the items that match it, as the API server's
would: a selector that matches nothing gets an empty list, and the test fails. `pods/exec` is
served over a WebSocket speaking the `v4.channel.k8s.io` protocol (stdout on channel 1, the
outcome as a Status on channel 3), its outputs queued per pod.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).resolve().parent / "kube_fixtures"
NS = "cloudwatcher"


def fixture(name: str) -> Any:
    """A recorded answer: JSON, or text for `.txt`."""
    path = FIXTURES / name
    return path.read_text() if path.suffix == ".txt" else json.loads(path.read_text())


def pod(
    name: str,
    uid: str,
    component: str = "api",
    ready: bool = True,
    node: str = "cwh-worker",
    owner: str = "ReplicaSet",
    namespace: str = NS,
    **labels: str,
) -> dict[str, Any]:
    """The recorded Pod (`pod.json`) as another pod: its name, uid, component, node, namespace,
    controller (`owner`, named as its pods' names say: `api-6d9f7c8b5d` for `api-6d9f7c8b5d-a`;
    "" for none, `ownerReferences: null`), extra labels, and Ready or not (still starting: its
    Ready condition False)."""
    out = copy.deepcopy(fixture("pod.json"))
    meta = out["metadata"]
    meta.update(name=name, uid=uid, namespace=namespace)
    meta["labels"] = {**meta["labels"], "app.kubernetes.io/component": component, **labels}
    if owner:
        meta["ownerReferences"][0].update(kind=owner, name=name.rsplit("-", 1)[0])
    else:
        meta["ownerReferences"] = None
    out["spec"]["nodeName"] = node
    for cond in out["status"]["conditions"]:
        if cond["type"] in ("Ready", "ContainersReady"):
            cond["status"] = "True" if ready else "False"
    out["status"]["containerStatuses"][0]["ready"] = ready
    return out


def pod_list(*pods: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "48300"},
        "items": list(pods),
    }


def not_found(name: str) -> tuple[int, dict[str, Any]]:
    status = fixture("status-not-found.json")
    status["message"] = f'pods "{name}" not found'
    status["details"]["name"] = name
    return 404, status


@dataclass(frozen=True)
class Exec:
    """How a command run in a pod ends: its standard output, then (after `running_s`, the
    command still running) the Status on channel 3, none when `status` is empty."""

    stdout: str = ""
    running_s: float = 0
    status: dict[str, Any] = field(default_factory=lambda: {"metadata": {}, "status": "Success"})


def _terms(selector: str) -> list[str]:
    """A selector's requirements: split at the commas outside `(...)`."""
    return [t.strip() for t in re.split(r",(?![^()]*\))", selector) if t.strip()]


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Whether `labels` satisfy a label selector, as the API server evaluates it."""
    for term in _terms(selector):
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif m := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w./-]*)", term):
            if (labels.get(m[1]) == m[3]) != (m[2] != "!="):
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(item: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        item = item.get(key) or {}
    return item


def selected(answer: Any, query: Mapping[str, str]) -> Any:
    """`answer` with, when it is a list, only the items the query's selectors match (a field
    selector: `path=value` terms, like `spec.nodeName=` or `metadata.name=`)."""
    if not (isinstance(answer, dict) and answer.get("kind", "").endswith("List")):
        return answer
    labels_ = query.get("labelSelector", "")
    fields = [t.split("=", 1) for t in _terms(query.get("fieldSelector", ""))]

    def keep(item: dict[str, Any]) -> bool:
        return matches(labels_, item["metadata"].get("labels") or {}) and all(
            _field(item, path) == value for path, value in fields
        )

    return {**answer, "items": [i for i in answer["items"] if keep(i)]}


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str


@dataclass
class FakeApi:
    """The server's script and record. `url` is where it listens."""

    url: str = ""
    routes: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    execs: dict[str, list[str | Exec]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Any) -> None:
        """Queue answers for `method path`: each a body (200) or a (status, body) pair."""
        queue = self.routes.setdefault((method, path), [])
        queue += [a if isinstance(a, tuple) else (200, a) for a in answers]

    def on_exec(self, pod: str, *outputs: str | Exec) -> None:
        """Queue what commands run in `pod` answer: a standard output (then Success), or an
        `Exec` for another ending."""
        self.execs.setdefault(pod, []).extend(outputs)

    def called(self, method: str = "", path: str = "") -> list[Call]:
        """The calls made, of `method` and to `path` when given, in order."""
        return [
            c
            for c in self.calls
            if (not method or c.method == method) and (not path or c.path == path)
        ]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode()
        query: dict[str, list[str]] = {}
        for k, v in request.query.items():
            query.setdefault(k, []).append(v)
        self.calls.append(
            Call(
                request.method, request.path, query, body, request.headers.get("Authorization", "")
            )
        )
        if (
            request.path.endswith("/exec")
            and request.headers.get("Upgrade", "").lower() == "websocket"
        ):
            return await self._exec(request)
        queue = self.routes.get((request.method, request.path))
        if not queue:
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "code": 404,
                    "reason": "NotFound",
                    "message": f"nothing recorded for {request.method} {request.path}",
                },
                status=404,
            )
        status, answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, str):
            return web.Response(text=answer, status=status)
        return web.json_response(selected(answer, request.query), status=status)

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        pod = request.path.split("/")[-2]
        outputs = self.execs.get(pod) or []
        if outputs:
            out = outputs.pop(0) if len(outputs) > 1 else outputs[0]
            end = out if isinstance(out, Exec) else Exec(out)
            await ws.send_bytes(b"\x01" + end.stdout.encode())
            if end.running_s:
                await asyncio.sleep(end.running_s)
            if end.status:
                await ws.send_bytes(b"\x03" + json.dumps(end.status).encode())
        else:
            failure = {
                "metadata": {},
                "status": "Failure",
                "message": f"no exec recorded for {pod}",
            }
            await ws.send_bytes(b"\x03" + json.dumps(failure).encode())
        await ws.close()
        return ws


@contextmanager
def serve() -> Iterator[FakeApi]:
    """A FakeApi listening on 127.0.0.1 (a free port) until the block ends."""
    api = FakeApi()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        api.url = f"http://127.0.0.1:{port}"
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake-kube-api", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield api
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def kubeconfig(path: Path, server: str, token: str = "fake-token") -> Path:
    """A kubeconfig naming the fake server, a token user and a context `fake`."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "fake", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "fake", "namespace": NS},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    return path
