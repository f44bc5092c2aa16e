"""Who may call the API and how much one call may send.

Bearer tokens come from ``$MLLM_DR_API_TOKENS`` (comma-separated) and/or a token file (one per line); only
their SHA-256 digests are kept, and a presented token is compared against every one of them in constant
time. Request bodies are counted as they stream in, so a lying or missing ``Content-Length`` cannot push
more than the limit into memory. Media is only ever written into a private (0700) folder that is removed
when the request is done, whatever happens.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import HTTPException, Request

from mllm_dr.errors import UserError

TOKENS_ENV = "MLLM_DR_API_TOKENS"


class TokenSet:
    """The accepted bearer tokens, held as digests."""

    def __init__(self, tokens: Iterable[str]):
        self._digests = [_digest(t) for t in {t.strip() for t in tokens} if t.strip()]

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:  # no early exit: the time taken does not say which token matched
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def load_tokens(token_file: str | None = None) -> TokenSet:
    """Tokens from ``$MLLM_DR_API_TOKENS`` plus ``token_file`` (blank lines and ``#`` comments ignored)."""
    tokens = os.environ.get(TOKENS_ENV, "").split(",")
    if token_file:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read token file {token_file}: {exc.strerror or type(exc).__name__}") from None
        tokens += [line for line in lines if not line.strip().startswith("#")]
    return TokenSet(tokens)


class Authenticator:
    """Checks ``Authorization: Bearer <token>``; refuses to exist without tokens unless told it is insecure."""

    def __init__(self, tokens: TokenSet, insecure_no_auth: bool = False):
        if not tokens and not insecure_no_auth:
            raise UserError(f"no API tokens: set {TOKENS_ENV} (comma-separated) or auth.token_file, "
                            "or pass --insecure-no-auth for local use")
        self.tokens = tokens
        self.required = not insecure_no_auth

    def check(self, request: Request) -> None:
        if not self.required:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token (send 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": "Bearer"})
        if not self.tokens.accepts(token.strip()):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def too_large(limit_bytes: int) -> HTTPException:
    return HTTPException(413, f"request body exceeds the {limit_bytes / 2**20:g} MiB limit")


def check_declared_length(request: Request, limit_bytes: int) -> None:
    """Refuse early, before reading a byte, when the client declares too much."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPException(400, "malformed Content-Length header") from None
        if length > limit_bytes:
            raise too_large(limit_bytes)


async def limited_stream(request: Request, limit_bytes: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, stopping with 413 as soon as more than the limit has arrived."""
    check_declared_length(request, limit_bytes)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit_bytes:
            raise too_large(limit_bytes)
        if chunk:
            yield chunk


async def read_limited(request: Request, limit_bytes: int) -> bytes:
    return b"".join([chunk async for chunk in limited_stream(request, limit_bytes)])


class ForbiddenPath(UserError):
    """A ``video_uri`` naming a local file outside the folders this server may read."""


def local_video_path(uri: str, roots: list[str]) -> Path | None:
    """The local file a ``video_uri`` names (``None`` for a remote URI), refused unless it lies inside one of
    ``roots``: an API must not become a way to read any file the server can."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = Path(uri.removeprefix("file://")).expanduser().resolve()
    if not any(path.is_relative_to(Path(root).expanduser().resolve()) for root in roots):
        raise ForbiddenPath("local video paths are not accepted here" if not roots else
                            "the video path is outside the folders this server may read")
    if not path.is_file():
        raise UserError("video_uri: no such file")
    return path


@contextmanager
def private_tempdir(parent: str | None = None) -> Iterator[Path]:
    """A folder only this user can enter, removed with everything in it when the block ends."""
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="mllm-dr-upload-", dir=parent))
    try:
        os.chmod(path, 0o700)  # mkdtemp already does this; say it explicitly, it is the point
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
