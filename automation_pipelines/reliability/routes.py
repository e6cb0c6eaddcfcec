"""Where an owner's alerts go: `alert_routes.yaml` names, per owner, the environment variables
that hold apprise URLs (they carry tokens, so they live in `.env` or a secret store), and one
notification is sent to one of them through apprise."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import apprise
import yaml

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.secrets import redact

ROUTES_FILE = PROJECT_ROOT / "alert_routes.yaml"


@dataclass(frozen=True)
class Routes:
    """Owner → names of environment variables holding apprise URLs (they carry tokens)."""

    default: tuple[str, ...]
    owners: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls, path: Path | str | None = None) -> Routes:
        raw = yaml.safe_load(Path(path or ROUTES_FILE).read_text(encoding="utf-8")) or {}

        def names(value: object) -> tuple[str, ...]:
            return (value,) if isinstance(value, str) else tuple(value or ())

        owners = {str(k): names(v) for k, v in (raw.get("owners") or {}).items()}
        return cls(default=names(raw.get("default")), owners=owners)

    def has_route(self, owner: str) -> bool:
        return bool(self.owners.get(owner))

    def env_names(self, owner: str) -> tuple[str, ...]:
        return self.owners.get(owner) or self.default

    def urls(self, owner: str) -> list[str]:
        """The apprise URLs configured now for `owner` (its own route, else the default)."""
        found: list[str] = []
        for name in self.env_names(owner):
            for url in re.split(r"[\s,]+", os.environ.get(name) or ""):
                if url and url not in found:
                    found.append(url)
        return found


def channel_id(url: str) -> str:
    """A stable name for a channel that does not reveal its URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def channel_label(url: str) -> str:
    """The URL as apprise shows it with secrets hidden (for people reading the outbox)."""
    try:
        plugin = apprise.Apprise.instantiate(url)
        if plugin:
            return redact(plugin.url(privacy=True))
    except Exception:  # a label is a nicety; never let it stop a delivery
        pass
    return redact(url.split("://", 1)[0] + "://…")


def send_apprise(url: str, title: str, body: str) -> tuple[bool, str]:
    """Send one notification; return whether the channel accepted it and what went wrong."""
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return False, f"apprise does not understand the URL {channel_label(url)}"
    with apprise.LogCapture(level=logging.WARNING) as captured:
        accepted = notifier.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT)
    return bool(accepted), redact(captured.getvalue().strip())[-2000:]
