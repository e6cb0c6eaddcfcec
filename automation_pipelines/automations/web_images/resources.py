"""Where the photos are: one root folder holding the inbox and everything made from it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from automation_pipelines.paths import PROJECT_ROOT

ROOT_ENV = "WEB_IMAGES_ROOT"
MARGIN_ENV = "WEB_IMAGES_FREE_SPACE_MARGIN_MB"
DEFAULT_MARGIN_MB = 100.0


class PhotoFolders(dg.ConfigurableResource):
    """`root/inbox` is watched; renditions go to `root/web`, originals to `root/processed`, and
    files that cannot become web images to `root/quarantine` with a reason."""

    root: str
    #: Space left free on the output volume beyond the photos of a batch; below it the sensor
    #: requests nothing (a run would only fail with "disk full") and says how much is free.
    free_space_margin_mb: float = DEFAULT_MARGIN_MB

    @classmethod
    def from_env(cls) -> PhotoFolders:
        """$WEB_IMAGES_ROOT, else `data/web_images` in the project (git-ignored);
        $WEB_IMAGES_FREE_SPACE_MARGIN_MB, else 100 MB."""
        return cls(
            root=os.environ.get(ROOT_ENV) or str(PROJECT_ROOT / "data" / "web_images"),
            free_space_margin_mb=float(os.environ.get(MARGIN_ENV) or DEFAULT_MARGIN_MB),
        )

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
