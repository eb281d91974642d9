"""The baseline of `make bench-load`: a plain Locust FastHttpUser making the same HTTP requests
as the phone (submit, read, sync in the phone's 6:2:1 proportions), and nothing else: no
socket, no ledger, no outbox."""

from __future__ import annotations

import random
import uuid

from locust import FastHttpUser, constant, task


class PlainUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        ident = self.client.post("/v1/devices", json={"platform": "ios"}, name="register").json()
        r = self.client.post(
            "/oauth/token",
            data={"client_id": ident["client_id"], "client_secret": ident["client_secret"]},
            name="token",
        )
        self.auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        self.ids: list[str] = []

    @task(6)
    def submit(self) -> None:
        r = self.client.post(
            "/v1/requests",
            json={"provider": "gdrive", "document": "doc-001.txt", "instruction": "summarize"},
            headers={**self.auth, "Idempotency-Key": uuid.uuid4().hex},
            name="submit",
        )
        self.ids.append(r.json()["request_id"])

    @task(2)
    def read(self) -> None:
        if self.ids:
            self.client.get(
                f"/v1/requests/{random.choice(self.ids)}", headers=self.auth, name="read"
            )

    @task(1)
    def sync(self) -> None:
        self.client.get("/v1/sync?since=0", headers=self.auth, name="sync")
