"""The environment's secrets are drawn so that a command line can carry them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from env import secrets as env_secrets
from env.secrets import Secrets


def test_a_secret_never_starts_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    drawn = iter(["-looks-like-an-option", "-again", "fine-value"] * 50)
    monkeypatch.setattr(env_secrets.secrets, "token_urlsafe", lambda n: next(drawn))
    made = Secrets.load_or_create(tmp_path / "secrets.json")
    values = json.loads((tmp_path / "secrets.json").read_text())
    assert values
    assert all(v == "fine-value" for v in values.values())
    assert made.registration_secret == "fine-value"


def test_secrets_already_there_are_kept(tmp_path: Path):
    first = Secrets.load_or_create(tmp_path / "secrets.json")
    assert Secrets.load_or_create(tmp_path / "secrets.json") == first
