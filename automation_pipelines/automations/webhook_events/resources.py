"""Where the events are kept: the project database (inbox, warehouse) and the report folder."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import listening, store

REPORTS_ENV = "WEBHOOK_REPORTS_DIR"
CHUNK_ENV = "WEBHOOK_LOAD_CHUNK_SIZE"
LISTEN_ENV = "WEBHOOK_LISTEN_SECONDS"


class EventWarehouse(dg.ConfigurableResource):
    """The inbox and the warehouse tables share one database so a load and its "done" mark are
    one transaction; `database_url` defaults to the project database beside the instance."""

    database_url: str | None = None
    reports_dir: str
    #: Events per load transaction: larger is faster, smaller holds the write lock for less.
    load_chunk_size: int = 200
    #: A tick that finds nothing keeps watching the inbox this long (see
    #: `reliability.listening`); 0 looks once per tick of the daemon (every 5 s).
    listen_seconds: float = 0.0

    @classmethod
    def from_env(cls) -> EventWarehouse:
        """$WEBHOOK_REPORTS_DIR, else `data/webhook_events/reports` in the project (git-ignored);
        $WEBHOOK_LOAD_CHUNK_SIZE, else 200 events per transaction; $WEBHOOK_LISTEN_SECONDS,
        else 3.5 s (0 turns listening off)."""
        default = PROJECT_ROOT / "data" / "webhook_events" / "reports"
        return cls(
            reports_dir=os.environ.get(REPORTS_ENV) or str(default),
            load_chunk_size=int(os.environ.get(CHUNK_ENV) or 200),
            listen_seconds=float(os.environ.get(LISTEN_ENV) or listening.DEFAULT_WINDOW_SECONDS),
        )

    def url(self, instance: dg.DagsterInstance | None = None) -> str:
        root = instance.root_directory if instance is not None else None
        return self.database_url or store.database_url(root)

    def engine(self, instance: dg.DagsterInstance | None = None) -> sa.Engine:
        return store.engine(self.url(instance))

    @property
    def reports(self) -> Path:
        return Path(self.reports_dir)
