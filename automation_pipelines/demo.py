"""`make demo`: give a newcomer something to watch. With `make run` up, it drops sample photos
into the web_images inbox and posts signed sample webhook events to the receiver, then says where
in the UI each one shows up.

Everything goes through the front doors a real sender uses (a file renamed into the inbox, a
signed HTTP POST), so what the newcomer sees is what production does.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from automation_pipelines.webhooks.senders import github_headers

SECRET_ENV = "GITHUB_WEBHOOK_SECRET"


@dataclass(frozen=True)
class DemoResult:
    photos: list[Path]
    accepted: int
    duplicates: int


def sample_photo(path: Path, seed: int, width: int = 2400, height: int = 1600) -> Path:
    """A photo-like JPEG (sky gradient, hills, sun) drawn with Pillow: no download needed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    top, bottom = (rng.randint(40, 90), rng.randint(110, 170), 230), (250, 200, 150)
    for y in range(height):
        t = y / height
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (width, y)], fill=colour)
    sun = (rng.randint(200, width - 200), rng.randint(150, height // 2))
    draw.ellipse([sun[0] - 120, sun[1] - 120, sun[0] + 120, sun[1] + 120], fill=(255, 230, 120))
    for layer in range(3):
        base = height * (0.55 + 0.12 * layer)
        points = [(x, base - rng.randint(0, 220)) for x in range(0, width + 200, 200)]
        green = (40 + 30 * layer, 110 + 25 * layer, 50 + 10 * layer)
        draw.polygon([(0, height), *points, (width, height)], fill=green)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)
    return path


def drop_photos(inbox: Path, count: int = 3) -> list[Path]:
    """Write each photo next to the inbox and rename it in, as a finished upload lands."""
    staging = inbox.parent / ".demo-staging"
    dropped = []
    for index in range(count):
        name = f"demo-{int(time.time())}-{index + 1}.jpg"
        staged = sample_photo(staging / name, seed=index)
        inbox.mkdir(parents=True, exist_ok=True)
        os.replace(staged, inbox / name)
        dropped.append(inbox / name)
    staging.rmdir()
    return dropped


def sample_events(count: int) -> list[tuple[str, str, dict]]:
    """(delivery id, GitHub event type, payload): pushes and pull requests of a demo repository."""
    events = []
    for index in range(count):
        delivery = str(uuid.uuid4())
        if index % 3 == 2:
            payload = {
                "action": "closed" if index % 2 else "opened",
                "number": 100 + index,
                "repository": {"full_name": "acme/demo"},
                "pull_request": {
                    "merged": bool(index % 2),
                    "additions": 10 * index,
                    "deletions": index,
                },
            }
            events.append((delivery, "pull_request", payload))
        else:
            commits = [{"id": f"{index:02d}{n:038d}"} for n in range(1 + index % 4)]
            payload = {
                "ref": "refs/heads/main",
                "repository": {"full_name": "acme/demo"},
                "commits": commits,
                "pusher": {"name": "demo-bot"},
            }
            events.append((delivery, "push", payload))
    return events


def post_github(url: str, secret: str, delivery: str, event: str, payload: dict) -> int:
    """POST one event signed as GitHub signs it; return the HTTP status."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/hooks/github",
        data=body,
        headers=github_headers(body, secret, delivery=delivery, event=event),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class DemoError(RuntimeError):
    """The demo cannot run as asked; the message says what to do."""


def run_demo(receiver: str, inbox: Path, secret: str | None, events: int = 12) -> DemoResult:
    """Post `events` signed events (and one re-delivery) and drop three photos."""
    if not secret:
        raise DemoError(
            f"{SECRET_ENV} is not set: add it to .env (see the README's walkthrough) and restart "
            "`make run`, so the receiver and the demo share it"
        )
    sent = sample_events(events)
    statuses = [post_github(receiver, secret, *event) for event in sent]
    statuses.append(post_github(receiver, secret, *sent[0]))  # a sender's retry: acknowledged
    if any(status not in (200, 202) for status in statuses):
        refused = sorted({s for s in statuses if s not in (200, 202)})
        raise DemoError(
            f"the receiver at {receiver} answered {refused}: is `make run` up, and was it "
            f"started with the same {SECRET_ENV}?"
        )
    photos = drop_photos(inbox)
    return DemoResult(photos, statuses.count(202), statuses.count(200))


def where_to_look(ui: str, result: DemoResult) -> str:
    ui = ui.rstrip("/")
    return "\n".join(
        [
            f"Sent {result.accepted} signed webhook events ({result.duplicates} re-delivery "
            f"acknowledged without a second row) and dropped {len(result.photos)} photos into "
            f"{result.photos[0].parent}.",
            "",
            "Where to look in the Dagster UI:",
            f"  {ui}/runs                          the load and render runs, within ~30 s",
            f"  {ui}/assets/webhook_events_warehouse   events loaded per run (metadata)",
            f"  {ui}/assets/web_images              images made, MB saved",
            f"  {ui}/automation                     sensors and schedules, all running",
            f"  {ui}/assets/webhook_daily_report    Materialize > pick today's date, or backfill",
            "",
            "On disk: data/web_images/web/ (renditions), data/web_images/processed/ (originals).",
            "In the inbox table: automation-pipelines events status",
        ]
    )
