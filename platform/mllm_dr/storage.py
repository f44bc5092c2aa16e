"""Turn a URI into a filesystem that Ray Data and the rest of the code can use.

Local paths, ``file://`` and ``s3://`` URIs are accepted. S3 goes through s3fs with the standard AWS
credential chain (environment, shared files, instance roles); credentials are never passed or stored
by this project. A custom endpoint (MinIO, moto, Ceph) comes from ``--s3-endpoint`` or
``MLLM_DR_S3_ENDPOINT``. A :class:`Location` pickles without secrets, so it can be shipped to Ray workers,
which then use their own credential chain.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pyarrow.fs

from mllm_dr.errors import UserError

S3_ENDPOINT_ENV = "MLLM_DR_S3_ENDPOINT"


@dataclass(frozen=True)
class Location:
    """A place in a filesystem: the filesystem itself and a protocol-less path inside it."""

    fs: fsspec.AbstractFileSystem
    path: str
    protocol: str  # "file" or "s3"

    @property
    def uri(self) -> str:
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"

    def join(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), self.protocol)

    def exists(self) -> bool:
        return _guard(self.fs.exists, self.path)

    def isdir(self) -> bool:
        return _guard(self.fs.isdir, self.path)

    def open(self, mode: str = "rb", **kwargs: Any) -> IO:
        if "w" in mode and self.protocol == "file":
            self.fs.makedirs(posixpath.dirname(self.path) or ".", exist_ok=True)
        return _guard(self.fs.open, self.path, mode, **kwargs)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding, errors="replace")

    def write_bytes(self, data: bytes) -> None:
        with self.open("wb") as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def makedirs(self) -> None:
        if self.protocol == "file":
            self.fs.makedirs(self.path, exist_ok=True)

    def list_files(self, recursive: bool = True) -> list[Location]:
        """Every file below this location, sorted; hidden files and folders are skipped."""
        if not self.exists():
            raise UserError(f"{self.uri} does not exist")
        if not self.isdir():
            return [self]
        found = _guard(self.fs.find, self.path) if recursive else _guard(self.fs.ls, self.path, detail=False)
        files = []
        for path in sorted(found):
            relative = posixpath.relpath(path, self.path)
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            if recursive or not self.fs.isdir(path):
                files.append(Location(self.fs, path, self.protocol))
        return files

    def size(self) -> int:
        return int(_guard(self.fs.size, self.path))

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[str]:
        """A local path to this file for readers that need one (PyAV, h5py): the file itself on local disk,
        else a temporary download that is removed afterwards."""
        if self.protocol == "file":
            yield self.path
            return
        with tempfile.TemporaryDirectory(prefix="mllm-dr-") as folder:
            target = os.path.join(folder, posixpath.basename(self.path) or "download")
            _guard(self.fs.get_file, self.path, target)
            yield target

    def arrow_filesystem(self) -> pyarrow.fs.FileSystem:
        """The same filesystem in the form ``ray.data.read_*`` / ``write_*`` take as ``filesystem=``."""
        if self.protocol == "file":
            return pyarrow.fs.LocalFileSystem()
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.fs))


def resolve(uri: str, s3_endpoint: str | None = None) -> Location:
    """Parse ``/path``, ``file:///path`` or ``s3://bucket/prefix`` into a :class:`Location`."""
    uri = str(uri).strip()
    if not uri:
        raise UserError("empty URI")
    protocol, _, rest = uri.partition("://") if "://" in uri else ("file", "", uri)
    if protocol == "file":
        return Location(fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(rest)), "file")
    if protocol in ("s3", "s3a"):
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise UserError(f"{uri}: an s3:// URI needs a bucket, e.g. s3://bucket/prefix")
        return Location(s3_filesystem(s3_endpoint), rest.rstrip("/"), "s3")
    raise UserError(f"{uri}: unsupported URI scheme {protocol!r} (use a local path, file:// or s3://)")


def s3_filesystem(endpoint: str | None = None) -> fsspec.AbstractFileSystem:
    """An s3fs filesystem on the standard credential chain, with an optional custom endpoint."""
    import s3fs

    endpoint = endpoint or os.environ.get(S3_ENDPOINT_ENV) or None
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    # skip_instance_cache: a Location must not pick up a filesystem made for another endpoint.
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True)


def _guard(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a filesystem call, turning storage failures into one-line :class:`UserError` messages."""
    try:
        return call(*args, **kwargs)
    except FileNotFoundError as exc:
        raise UserError(f"not found: {exc.filename or (args[0] if args else '')}") from exc
    except PermissionError as exc:
        raise UserError(f"access denied: {args[0] if args else ''} ({_first_line(exc)})") from exc
    except Exception as exc:  # botocore's credential and endpoint errors have no common base we can import lazily
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "ClientError", "EndpointConnectionError",
                    "ProfileNotFound"):
            raise UserError(f"S3 error on {args[0] if args else ''}: {name}: {_first_line(exc)}") from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
