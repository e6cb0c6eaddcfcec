"""Items an automation gave up on (quarantined files, dead-lettered events), kept until resolved.

A run that skips a bad item succeeds, so no alert names the item; keeping it here in the project
database lets the daily digest list what is still waiting for a person, and lets that person
mark it handled (`automation-pipelines deadletters resolve`), or the automation itself when the
item comes through again (`resolve_items`). Items and reasons are redacted before they are stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.secrets import redact

dead_letters_table = sa.Table(
    "ap_dead_letters",
    store.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("automation", sa.String(255), nullable=False),
    sa.Column("item", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float),
    sa.Index("ix_ap_dead_letters_open", "automation", "resolved_at"),
)


def record_dead_letter(engine: sa.Engine, automation: str, item: str, reason: str) -> int:
    """Keep an item the automation could not process; return its id."""
    with engine.begin() as conn:
        return conn.execute(
            dead_letters_table.insert().values(
                automation=automation,
                item=redact(str(item)),
                reason=redact(str(reason)),
                created_at=time.time(),
            )
        ).inserted_primary_key[0]


def open_dead_letters(engine: sa.Engine, automation: str | None = None) -> Sequence[sa.Row]:
    """Unresolved items, oldest first; only `automation`'s when given."""
    query = (
        sa.select(dead_letters_table)
        .where(dead_letters_table.c.resolved_at.is_(None))
        .order_by(dead_letters_table.c.id)
    )
    if automation is not None:
        query = query.where(dead_letters_table.c.automation == automation)
    with engine.connect() as conn:
        return conn.execute(query).all()


def resolve_dead_letters(engine: sa.Engine, ids: Iterable[int]) -> int:
    """Mark items handled; return how many were open (resolving twice keeps the first time)."""
    ids = list(ids)
    if not ids:
        return 0
    with engine.begin() as conn:
        return conn.execute(
            dead_letters_table.update()
            .where(dead_letters_table.c.id.in_(ids), dead_letters_table.c.resolved_at.is_(None))
            .values(resolved_at=time.time())
        ).rowcount


def resolve_automation(engine: sa.Engine, automation: str) -> int:
    """Mark every open item of `automation` handled; return how many were open."""
    with engine.begin() as conn:
        return conn.execute(
            dead_letters_table.update()
            .where(
                dead_letters_table.c.automation == automation,
                dead_letters_table.c.resolved_at.is_(None),
            )
            .values(resolved_at=time.time())
        ).rowcount


def age_text(seconds: float) -> str:
    """How long an item has waited, at the precision a person acts on ("3 d 4 h")."""
    minutes = int(max(0.0, seconds) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else "under 1 min"


def resolve_items(engine: sa.Engine, automation: str, items: Iterable[str]) -> int:
    """Mark the open items of `automation` with these names handled (a photo re-dropped and
    rendered, an event replayed and loaded); return how many were open."""
    names = [redact(str(item)) for item in items]
    if not names:
        return 0
    with engine.begin() as conn:
        return conn.execute(
            dead_letters_table.update()
            .where(
                dead_letters_table.c.automation == automation,
                dead_letters_table.c.item.in_(names),
                dead_letters_table.c.resolved_at.is_(None),
            )
            .values(resolved_at=time.time())
        ).rowcount


def open_items(engine: sa.Engine, automation: str, items: Iterable[str]) -> set[str]:
    """Those of `items` that have an open dead letter of `automation`, in a query per 500: a
    batch that delivers many items resolves only those, instead of one update per item."""
    by_name = {redact(str(item)): item for item in items}
    names, found = list(by_name), set()
    with engine.connect() as conn:
        for start in range(0, len(names), 500):
            found.update(
                conn.execute(
                    sa.select(dead_letters_table.c.item).where(
                        dead_letters_table.c.automation == automation,
                        dead_letters_table.c.item.in_(names[start : start + 500]),
                        dead_letters_table.c.resolved_at.is_(None),
                    )
                ).scalars()
            )
    return {by_name[name] for name in found}


#: Run tags that make a run which set items aside stand out in the UI's run list.
QUARANTINED_TAG = "result/quarantined"
DEAD_LETTERED_TAG = "result/dead_lettered"


def flag_run(context, *, quarantined: int = 0, dead_lettered: int = 0) -> None:
    """Tag the running run with what it set aside, so the run list shows it next to the green
    status instead of hiding it in the event log."""
    tags = {}
    if quarantined:
        tags[QUARANTINED_TAG] = str(quarantined)
    if dead_lettered:
        tags[DEAD_LETTERED_TAG] = str(dead_lettered)
    if tags:
        context.instance.add_run_tags(context.run_id, tags)


def set_aside_of(tags: Mapping[str, str]) -> tuple[int, int]:
    """(quarantined, dead-lettered) items a run's tags say it set aside; (0, 0) for none."""

    def count(tag: str) -> int:
        value = tags.get(tag, "")
        return int(value) if value.isdigit() else 0

    return count(QUARANTINED_TAG), count(DEAD_LETTERED_TAG)


def count_open_by_automation(engine: sa.Engine) -> dict[str, int]:
    """Unresolved items per automation (automations with none are absent)."""
    query = (
        sa.select(dead_letters_table.c.automation, sa.func.count())
        .where(dead_letters_table.c.resolved_at.is_(None))
        .group_by(dead_letters_table.c.automation)
    )
    with engine.connect() as conn:
        return {automation: count for automation, count in conn.execute(query)}
