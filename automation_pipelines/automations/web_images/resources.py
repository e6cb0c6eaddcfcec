"""Where the photos are: one root folder holding the inbox and everything made from it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import listening

ROOT_ENV = "WEB_IMAGES_ROOT"
MARGIN_ENV = "WEB_IMAGES_FREE_SPACE_MARGIN_MB"
DEFAULT_MARGIN_MB = 100.0
QUIET_ENV = "WEB_IMAGES_QUIET_SECONDS"
DEFAULT_QUIET_SECONDS = 1.0
LISTEN_ENV = "WEB_IMAGES_LISTEN_SECONDS"
BATCH_ENV = "WEB_IMAGES_MAX_FILES_PER_RUN"
#: Under load a run takes up to this many files (a trickle: 25 per run; at most 1 GB of photos,
#: see the sensor): a killed run's retry redoes only the photos not yet moved, so a big batch
#: costs little.
DEFAULT_MAX_FILES_PER_RUN = 2000
THREADS_ENV = "WEB_IMAGES_RENDER_THREADS"
#: With no setting a run renders this many photos at once per CPU it may use, plus one (it
#: keeps the cores busy while one photo is read or recorded), and never more than
#: `MAX_AUTO_THREADS`: every photo under way holds its decoded pixels.
MAX_AUTO_THREADS = 8
GRACE_ENV = "WEB_IMAGES_TRUNCATED_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 300.0


class PhotoFolders(dg.ConfigurableResource):
    """`root/inbox` is watched; renditions go to `root/web`, originals to `root/processed`, and
    files that cannot become web images to `root/quarantine` with a reason."""

    root: str
    #: Space left free on the output volume beyond the photos of a batch; below it the sensor
    #: requests nothing (a run would only fail with "disk full") and says how much is free.
    free_space_margin_mb: float = DEFAULT_MARGIN_MB
    #: A file is taken once it has not changed for this long. Short: the run decodes every file
    #: whole, and one that ends early waits out `truncated_grace_seconds` before quarantine.
    quiet_seconds: float = DEFAULT_QUIET_SECONDS
    #: A file that ends early (an upload that stalled) waits this long after its last change
    #: before it is quarantined as truncated.
    truncated_grace_seconds: float = DEFAULT_GRACE_SECONDS
    #: A tick that finds nothing keeps watching the inbox this long (see
    #: `reliability.listening`); 0 looks once per tick of the daemon (every 5 s).
    listen_seconds: float = 0.0
    #: The most files one run takes when a backlog is spread over a tick's runs: bigger batches
    #: cost fewer run starts, smaller ones redo less after a killed worker.
    max_files_per_run: int = DEFAULT_MAX_FILES_PER_RUN
    #: Photos a run (or a Celery step) renders at once; 0: one per CPU the process may use,
    #: plus one, at most `MAX_AUTO_THREADS`. Each holds its decoded pixels, up to 60 MP x 4
    #: bytes, so a small-memory worker sets fewer.
    render_threads: int = 0

    @classmethod
    def from_env(cls) -> PhotoFolders:
        """$WEB_IMAGES_ROOT, else `data/web_images` in the project (git-ignored);
        $WEB_IMAGES_FREE_SPACE_MARGIN_MB, else 100 MB; $WEB_IMAGES_QUIET_SECONDS, else 1 s;
        $WEB_IMAGES_TRUNCATED_GRACE_SECONDS, else 300 s; $WEB_IMAGES_LISTEN_SECONDS, else
        3.5 s (0 turns listening off); $WEB_IMAGES_MAX_FILES_PER_RUN, else 2000;
        $WEB_IMAGES_RENDER_THREADS, else one per CPU plus one."""
        return cls(
            root=os.environ.get(ROOT_ENV) or str(PROJECT_ROOT / "data" / "web_images"),
            free_space_margin_mb=float(os.environ.get(MARGIN_ENV) or DEFAULT_MARGIN_MB),
            quiet_seconds=float(os.environ.get(QUIET_ENV) or DEFAULT_QUIET_SECONDS),
            truncated_grace_seconds=float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_SECONDS),
            listen_seconds=float(os.environ.get(LISTEN_ENV) or listening.DEFAULT_WINDOW_SECONDS),
            max_files_per_run=int(os.environ.get(BATCH_ENV) or DEFAULT_MAX_FILES_PER_RUN),
            render_threads=int(os.environ.get(THREADS_ENV) or 0),
        )

    def threads(self) -> int:
        """How many photos to render at once (see `render_threads`)."""
        if self.render_threads > 0:
            return self.render_threads
        return min(MAX_AUTO_THREADS, len(os.sched_getaffinity(0)) + 1)

    @property
    def inbox(self) -> Path:
        return Path(self.root) / "inbox"

    @property
    def output(self) -> Path:
        return Path(self.root) / "web"

    @property
    def processed(self) -> Path:
        return Path(self.root) / "processed"

    @property
    def quarantine(self) -> Path:
        return Path(self.root) / "quarantine"

    @property
    def waiting(self) -> Path:
        """One note per inbox file that ends early and waits out its grace period."""
        return Path(self.root) / ".waiting"

    @property
    def manifest(self) -> Path:
        return self.output / "manifest.json"

    @property
    def lock(self) -> Path:
        """Held by a run for its whole batch, so two runs never write the tree at once."""
        return Path(self.root) / ".web_images.lock"

    @property
    def output_volume(self) -> Path:
        """Where free space is measured: `web/`, or the root until `web/` exists."""
        return self.output if self.output.is_dir() else Path(self.root)

    def own_folders(self) -> list[Path]:
        return [self.output, self.processed, self.quarantine]
