"""Folder trees for the backup tests: text and binary files in nested folders, made from a seed."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path


def make_tree(root: Path, files: int = 60, size: int = 20_000, seed: int = 7) -> Path:
    """`files` files of up to `size` bytes under `root`, in folders `a/`, `a/b/` and the top;
    every third is random bytes, the rest text. Returns `root`."""
    rng = random.Random(seed)
    folders = [root, root / "a", root / "a" / "b"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        folder = folders[index % len(folders)]
        length = rng.randint(size // 4, size)
        if index % 3 == 0:
            (folder / f"file-{index}.bin").write_bytes(rng.randbytes(length))
        else:
            words = " ".join(f"word{rng.randint(0, 500)}" for _ in range(length // 7 + 1))
            (folder / f"file-{index}.txt").write_text(words[:length])
    (root / "empty.txt").write_bytes(b"")
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
