"""Where the photos are: one root folder holding the inbox and everything made from it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from automation_pipelines.paths import PROJECT_ROOT

ROOT_ENV = "WEB_IMAGES_ROOT"


class PhotoFolders(dg.ConfigurableResource):
    """`root/inbox` is watched; renditions go to `root/web`, originals to `root/processed`, and
    files that cannot become web images to `root/quarantine` with a reason."""

    root: str

    @classmethod
    def from_env(cls) -> PhotoFolders:
        """$WEB_IMAGES_ROOT, else `data/web_images` in the project (git-ignored)."""
        return cls(root=os.environ.get(ROOT_ENV) or str(PROJECT_ROOT / "data" / "web_images"))

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

    def own_folders(self) -> list[Path]:
        return [self.output, self.processed, self.quarantine]
