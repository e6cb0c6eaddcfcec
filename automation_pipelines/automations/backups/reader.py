"""Read a local restic repository back without restic: the check of a new snapshot.

Every restic command first derives the repository key from the password (scrypt, calibrated by
`restic init` to take a noticeable part of a second), so verifying a snapshot with `restic ls`
after `restic backup` pays for it twice. This reader derives the key once, on the spare CPU
while restic's own backup starts (restic's key derivation runs on one core), and afterwards
reads the new snapshot's trees straight from the repository's files: every file and blob
authenticated (Poly1305-AES), every tree checked against its id (SHA-256). It follows restic's
documented repository format (versions 1 and 2: AES-256-CTR, zstd-compressed blobs and files).

It is an independent second reading of what restic wrote. Whatever it cannot read or does not
find as expected (another format, a key or index file it cannot open, a count that differs) is
left to `restic ls` to judge; the snapshot's own file or one of its trees found damaged on disk
is reported as such (DamagedSnapshot), since restic may be reading a good copy in its cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from automation_pipelines.automations.backups.restic import (
    Repository,
    ResticSnapshot,
    is_remote,
    snapshot_from,
)

#: restic tries at most this many key files before giving up; so does this reader.
MAX_KEYS = 20
#: scrypt's memory is 128 * N * r bytes; restic 0.14 calibrates it below 60 MiB, this allows more.
_SCRYPT_MAXMEM = 1 << 30
_IV, _MAC = 16, 16
_ZSTD_FILE = 2  # a repository-version-2 file whose plaintext starts with this byte is zstd


class UnreadableRepository(Exception):
    """The reader cannot vouch for what it was asked: restic has to judge instead."""


class Unauthentic(UnreadableRepository):
    """An encrypted item whose MAC is wrong: another key's, cut short, or damaged."""


class DamagedSnapshot(Exception):
    """An item of the snapshot itself (its file or one of its trees), read straight from the
    repository, is damaged: restic, reading through its cache, might not see it."""


@dataclass(frozen=True)
class _Key:
    encrypt: bytes
    mac_k: bytes
    mac_r: bytes

    def open(self, data: bytes) -> bytes:
        """The plaintext of IV || ciphertext || MAC, once the MAC is right."""
        if len(data) < _IV + _MAC:
            raise Unauthentic("an encrypted item is too short")
        iv, body, tag = data[:_IV], data[_IV:-_MAC], data[-_MAC:]
        pad = Cipher(algorithms.AES(self.mac_k), modes.ECB()).encryptor().update(iv)
        try:
            Poly1305.verify_tag(self.mac_r + pad, body, tag)
        except InvalidSignature:
            raise Unauthentic("an item fails its authentication") from None
        decryptor = Cipher(algorithms.AES(self.encrypt), modes.CTR(iv)).decryptor()
        return decryptor.update(body) + decryptor.finalize()


def _split(raw: bytes) -> _Key:
    return _Key(encrypt=raw[:32], mac_k=raw[32:48], mac_r=raw[48:64])


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise UnreadableRepository("a key file is not as restic writes it")
    return base64.b64decode(text, validate=True)


def _master(key_file: dict, password: bytes) -> _Key | None:
    """The repository's master key if `password` opens this key file, else None."""
    if key_file.get("kdf") != "scrypt":
        raise UnreadableRepository(f"a key file uses {key_file.get('kdf')!r}")
    try:
        n, r, p = int(key_file["N"]), int(key_file["r"]), int(key_file["p"])
        salt, data = _b64(key_file["salt"]), _b64(key_file["data"])
    except (KeyError, TypeError, ValueError) as error:
        raise UnreadableRepository("a key file is not as restic writes it") from error
    user = _split(
        hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=64, maxmem=_SCRYPT_MAXMEM)
    )
    try:
        plain = user.open(data)
    except Unauthentic:
        return None  # another password's key
    try:
        master = json.loads(plain)
        raw = _b64(master["encrypt"]) + _b64(master["mac"]["k"]) + _b64(master["mac"]["r"])
    except (KeyError, TypeError, ValueError) as error:
        raise UnreadableRepository("a master key is not as restic writes it") from error
    if len(raw) != 64:
        raise UnreadableRepository("a master key has the wrong length")
    return _split(raw)


@dataclass(frozen=True)
class _Blob:
    pack: str
    offset: int
    length: int
    compressed: bool


class LocalRepository:
    """A local restic repository opened with its password, for reading snapshots back."""

    def __init__(self, path: Path, key: _Key) -> None:
        self.path = path
        self._key = key
        self._trees: dict[str, _Blob] = {}
        self._indexes_read: set[str] = set()
        self._index_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, password: bytes) -> LocalRepository:
        """Derive the master key as restic does: the first of the key files the password opens.
        Raises UnreadableRepository when none does or the repository is not one this reads."""
        try:
            names = sorted(entry.name for entry in os.scandir(path / "keys"))
        except OSError as error:
            raise UnreadableRepository(f"no key files: {error}") from error
        for name in names[:MAX_KEYS]:
            try:
                key_file = json.loads((path / "keys" / name).read_bytes())
            except (OSError, ValueError) as error:
                raise UnreadableRepository(f"key file {name[:8]}: {error}") from error
            master = _master(key_file, password)
            if master is not None:
                repository = cls(path, master)
                config = repository._file("config")
                if config.get("version") not in (1, 2):
                    raise UnreadableRepository(f"repository version {config.get('version')!r}")
                return repository
        raise UnreadableRepository("the password opens no key file")

    def _file(self, relative: str, data: bytes | None = None) -> Any:
        """A whole-file item (config, an index, a snapshot): authenticated, decompressed, JSON.
        `data`: the file's bytes, where the caller has read them already."""
        if data is None:
            try:
                data = (self.path / relative).read_bytes()
            except OSError as error:
                raise UnreadableRepository(f"{relative}: {error}") from error
        plain = self._key.open(data)
        if plain[:1] == bytes([_ZSTD_FILE]):
            plain = _decompress(plain[1:])
        try:
            return _json(plain)
        except ValueError as error:
            raise UnreadableRepository(f"{relative} is not JSON") from error

    def snapshot(self, short_id: str) -> tuple[str, dict]:
        """(full id, snapshot) for the one snapshot whose id starts with `short_id`."""
        try:
            names = [e.name for e in os.scandir(self.path / "snapshots")]
        except OSError as error:
            raise UnreadableRepository(f"snapshots: {error}") from error
        matching = [name for name in names if name.startswith(short_id)]
        if len(matching) != 1:
            raise UnreadableRepository(f"{len(matching)} snapshot(s) match {short_id}")
        [name] = matching
        try:
            data = (self.path / "snapshots" / name).read_bytes()
        except OSError as error:
            raise UnreadableRepository(f"snapshot {short_id}: {error}") from error
        if hashlib.sha256(data).hexdigest() != name:
            raise DamagedSnapshot(f"its file does not match its id {short_id}")
        try:
            snapshot = self._file(f"snapshots/{name}", data)
        except UnreadableRepository as error:
            raise DamagedSnapshot(f"its file: {error}") from error
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("tree"), str):
            raise DamagedSnapshot("its file is not a snapshot as restic writes it")
        return name, snapshot

    def files(self, snapshot: dict) -> tuple[int, int]:
        """(regular files, their bytes) under a snapshot's tree, as `restic ls` lists them."""
        count = size = 0
        for node in self._nodes(snapshot["tree"]):
            if node.get("type") == "file":
                count += 1
                size += int(node.get("size") or 0)
        return count, size

    def _nodes(self, root: str) -> Iterator[dict]:
        pending = [root]
        while pending:
            tree = self._tree(pending.pop())
            for node in tree.get("nodes") or ():
                if not isinstance(node, dict):
                    raise DamagedSnapshot("a tree node is not as restic writes it")
                if node.get("type") == "dir":
                    subtree = node.get("subtree")
                    if not isinstance(subtree, str):
                        raise DamagedSnapshot("a folder without its tree")
                    pending.append(subtree)
                yield node

    def _tree(self, tree_id: str) -> dict:
        blob = self._locate(tree_id)
        if blob is None:
            raise UnreadableRepository(f"tree {tree_id[:8]} is in no index")
        try:
            with open(self.path / "data" / blob.pack[:2] / blob.pack, "rb") as pack:
                pack.seek(blob.offset)
                data = pack.read(blob.length)
        except OSError as error:
            raise UnreadableRepository(f"pack {blob.pack[:8]}: {error}") from error
        where = f"tree {tree_id[:8]} in pack {blob.pack[:8]}"
        if len(data) != blob.length:
            raise DamagedSnapshot(f"{where}: the pack is shorter than its index says")
        try:
            plain = self._key.open(data)
            if blob.compressed:
                plain = _decompress(plain)
        except UnreadableRepository as error:
            raise DamagedSnapshot(f"{where}: {error}") from error
        if hashlib.sha256(plain).hexdigest() != tree_id:
            raise DamagedSnapshot(f"{where} does not match its id")
        try:
            tree = _json(plain)
        except ValueError as error:
            raise DamagedSnapshot(f"{where} is not JSON") from error
        if not isinstance(tree, dict):
            raise DamagedSnapshot(f"{where} is not a tree as restic writes it")
        return tree

    def _locate(self, tree_id: str) -> _Blob | None:
        """Where a tree blob lies. Index files are read once each, and again only for those
        written since (a later backup's), when a tree is in none read so far."""
        with self._index_lock:
            if tree_id not in self._trees:
                try:
                    names = {e.name for e in os.scandir(self.path / "index")}
                except OSError as error:
                    raise UnreadableRepository(f"index: {error}") from error
                for name in sorted(names - self._indexes_read):
                    self._read_index(name)
                    self._indexes_read.add(name)
            return self._trees.get(tree_id)

    def _read_index(self, name: str) -> None:
        index = self._file(f"index/{name}")
        try:
            for pack in index["packs"]:
                for blob in pack["blobs"]:
                    if blob["type"] == "tree":
                        self._trees[blob["id"]] = _Blob(
                            pack=pack["id"],
                            offset=int(blob["offset"]),
                            length=int(blob["length"]),
                            compressed=bool(blob.get("uncompressed_length")),
                        )
        except (KeyError, TypeError, ValueError) as error:
            raise UnreadableRepository(f"index {name[:8]} is not as restic writes it") from error


def password_of(repo: Repository) -> bytes | None:
    """The password as restic takes it: RESTIC_PASSWORD as given, a password file's content
    without the white space around it."""
    if repo.password is not None:
        return repo.password.encode()
    if repo.password_file is None:
        return None
    try:
        raw = Path(repo.password_file).read_bytes()
    except OSError:
        return None
    try:
        return raw.decode().strip().encode()
    except UnicodeDecodeError:
        return raw.strip()


def open_local(repo: Repository) -> LocalRepository | None:
    """The repository opened in this process, or None where only restic can read it: remote,
    no password here, or anything this reader does not understand."""
    password = None if is_remote(repo.location) else password_of(repo)
    if password is None:
        return None
    try:
        return LocalRepository.open(Path(repo.location).absolute(), password)
    except (UnreadableRepository, ValueError, MemoryError):  # ValueError: scrypt's parameters
        return None


def read_back(
    local: LocalRepository | None, short_id: str
) -> tuple[ResticSnapshot, int, int] | None:
    """A new snapshot as restic would list it, with its file count and bytes; None when it
    cannot be read here (restic then reads it). Raises DamagedSnapshot."""
    if local is None:
        return None
    try:
        ident, item = local.snapshot(short_id)
        files, size = local.files(item)
        return snapshot_from({**item, "id": ident}), files, size
    except (UnreadableRepository, ValueError, KeyError, TypeError):
        return None


def _json(data: bytes) -> Any:
    """orjson's reading, or `json`'s where orjson is stricter than the Go encoder's output."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _decompress(data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as error:
        raise UnreadableRepository(f"a compressed item does not decompress: {error}") from error
