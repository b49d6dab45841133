"""fsspec-backed object store rooted at a local directory or an S3 bucket.

Keys are '/'-separated and relative to the root (``tp_<ULID>/data/00000.parquet``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable
from urllib.parse import urlparse

import fsspec

from .. import errors, logs
from ..config import Settings
from .layout import dumps, to_delete_key


class StoreUnavailable(Exception):
    """The object store cannot be reached or used (one-line message for the operator)."""


def _outage_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, TimeoutError]  # s3fs maps most S3 failures to OSError
    from botocore.exceptions import BotoCoreError, ClientError  # connection, timeout, HTTP errors

    types += [BotoCoreError, ClientError]
    return tuple(types)


STORE_OUTAGES = _outage_types()  # what the store raises when it is down or failing


@dataclass
class ObjectStore:
    fs: fsspec.AbstractFileSystem
    root: str  # path prefix inside fs, without trailing '/'
    url: str  # human-readable location (no secrets)
    _local: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self._local = protocol in ("file", "local")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> "ObjectStore":
        endpoint = settings.store_endpoint
        if not endpoint:
            root = settings.data_path / "store"
            return cls.local(str(root))
        if endpoint.startswith("file://"):
            path = urlparse(endpoint).path
            return cls.local(f"{path.rstrip('/')}/{settings.store_bucket}")
        return cls.s3(endpoint, settings.store_bucket, settings.store_access_key,
                      settings.store_secret_key, settings.store_region)

    @classmethod
    def local(cls, root: str) -> "ObjectStore":
        fs = fsspec.filesystem("file", auto_mkdir=True)
        try:
            fs.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create store directory {root}: {exc.strerror}") from None
        return cls(fs, root.rstrip("/"), f"file://{root}")

    @classmethod
    def s3(cls, endpoint: str, bucket: str, key: str, secret: str, region: str) -> "ObjectStore":
        import s3fs

        if not bucket:
            raise StoreUnavailable("MOSAICOD_STORE_BUCKET is required with an S3 endpoint")
        # us-east-1 is boto's default; naming it makes bucket creation send an invalid constraint
        client_kwargs: dict[str, Any] = {"region_name": region} if region and region != "us-east-1" else {}
        if endpoint.startswith(("http://", "https://")):
            client_kwargs["endpoint_url"] = endpoint
        fs = s3fs.S3FileSystem(key=key or None, secret=secret or None, anon=False,
                               client_kwargs=client_kwargs,
                               # transient failures (throttling, 5xx, resets) retried with
                               # exponential backoff and jitter by botocore
                               config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                                              "retries": {"max_attempts": 5, "mode": "standard"}},
                               use_listings_cache=False, skip_instance_cache=True)
        store = cls(fs, bucket, f"s3://{bucket} at {endpoint}")
        try:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            fs.ls(bucket, refresh=True)
        except Exception as exc:  # botocore/aiohttp raise a zoo of types
            reason = errors.first_line(exc)
            raise StoreUnavailable(f"cannot reach the S3 store {store.url}: {reason}") from None
        return store

    # -- paths --------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def local_path(self, key: str) -> str | None:
        """The key's path on the local file system, or None for remote stores."""
        return self.path(key) if self._local else None

    def key_of(self, path: str) -> str:
        path = path.rstrip("/")
        prefix = self.root + "/"
        return path[len(prefix):] if path.startswith(prefix) else path

    # -- objects ------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        if not self._local:
            self.fs.pipe_file(self.path(key), data)
            return
        # a local store: the file written straight, its folder made only when missing (fsspec's
        # auto_mkdir checks and makes the folder for every file)
        path = self.path(key)
        try:
            f = open(path, "wb")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            f = open(path, "wb")
        with f:
            f.write(data)

    def get_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def mark_deleted(self, folder: str, *, best_effort: bool = False) -> None:
        """Write ``<folder>/TO_DELETE``.  ``best_effort``: log a failure instead of raising (for
        callers whose catalog change is already committed: cleanup marks unreferenced folders
        itself later)."""
        try:
            self.put_bytes(to_delete_key(folder), b"")
        except Exception as exc:
            if not best_effort:
                raise
            logs.get("mosaicod.store").warning("could not write TO_DELETE marker", folder=folder,
                                               error=str(exc))

    def put_json(self, key: str, doc: Any) -> None:
        self.put_bytes(key, dumps(doc))

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def open_read(self, key: str) -> BinaryIO:
        return self.fs.open(self.path(key), "rb")

    def open_write(self, key: str) -> BinaryIO:
        return self.fs.open(self.path(key), "wb")

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        if self._local:
            return os.path.getsize(self.path(key))
        return int(self.fs.size(self.path(key)))

    def info(self, key: str) -> dict:
        return self.fs.info(self.path(key))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        if not prefix or "/" in prefix.strip("/"):
            raise ValueError(f"refusing to delete {prefix!r}: only top-level folders are deleted")
        try:
            self.fs.rm(self.path(prefix), recursive=True)
        except FileNotFoundError:
            pass

    def list_dir(self, prefix: str = "") -> list[str]:
        """Names (not keys) directly under ``prefix``; [] if it does not exist."""
        try:
            entries = self.fs.ls(self.path(prefix), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rpartition("/")[2] for p in entries)

    def walk_files(self, prefix: str) -> Iterable[tuple[str, int]]:
        """(key, size) of every object under ``prefix``."""
        try:
            found = self.fs.find(self.path(prefix), detail=True)
        except FileNotFoundError:
            return []
        return [(self.key_of(p), int(info.get("size") or 0)) for p, info in sorted(found.items())]

    def check(self) -> None:
        """Raise StoreUnavailable unless the root can be listed."""
        try:
            self.fs.ls(self.root, refresh=True)
        except Exception as exc:
            raise StoreUnavailable(f"store {self.url} unreachable: {exc}") from None
