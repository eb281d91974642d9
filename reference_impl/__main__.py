"""`python -m reference_impl`: run the service `CW_ROLE` names, configured by `CW_*` variables."""

from __future__ import annotations

import sys

from aiohttp import web

from reference_impl.observability import setup_logging
from reference_impl.settings import ServiceSettings, SettingsError


def build(settings: ServiceSettings) -> web.Application:
    # Imported by role, so a process loads only what it runs.
    if settings.role == "api":
        from reference_impl.api import create_app
    elif settings.role == "hub":
        from reference_impl.hub import create_app
    elif settings.role == "worker":
        from reference_impl.worker import create_app
    elif settings.role == "llm":
        from reference_impl.llm_stub import create_app
    elif settings.role == "gateway":
        from reference_impl.storage import create_gateway as create_app
    elif settings.role in ("sharepoint", "gdrive"):
        from reference_impl.storage import create_emulator as create_app
    elif settings.role == "scheduler":
        from reference_impl.scheduler import create_app
    else:  # pragma: no cover - ServiceSettings validates the role
        raise SettingsError(settings.role)
    return create_app(settings)


def main() -> None:
    try:
        settings = ServiceSettings.from_environ()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.role, settings.name)
    app = build(settings)
    # shutdown_timeout bounds the drain of a worker and the going-away of a hub on SIGTERM.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        shutdown_timeout=25,
        print=None,
    )


if __name__ == "__main__":
    main()
