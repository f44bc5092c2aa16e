"""Tokens, upload folders and local-path policy: the security pieces that need no running server."""

from __future__ import annotations

import os
import stat

import pytest

from mllm_dr.errors import UserError
from mllm_dr.serving.security import (
    TOKENS_ENV,
    Authenticator,
    ForbiddenPath,
    TokenSet,
    load_tokens,
    local_video_path,
    private_tempdir,
)


def test_token_set_accepts_only_listed_tokens():
    tokens = TokenSet(["alpha-123", " beta-456 ", ""])
    assert len(tokens) == 2
    assert tokens.accepts("alpha-123") and tokens.accepts("beta-456")
    assert not tokens.accepts("alpha-12") and not tokens.accepts("alpha-1234")
    assert not tokens.accepts("") and not tokens.accepts(None)


def test_tokens_come_from_env_and_file(tmp_path, monkeypatch):
    token_file = tmp_path / "tokens"
    token_file.write_text("# rotated 2025-01\nfile-token\n\n")
    monkeypatch.setenv(TOKENS_ENV, "env-one, env-two")
    tokens = load_tokens(str(token_file))
    assert len(tokens) == 3
    assert all(tokens.accepts(t) for t in ("env-one", "env-two", "file-token"))
    assert not tokens.accepts("# rotated 2025-01")


def test_missing_token_file_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    with pytest.raises(UserError, match="cannot read token file"):
        load_tokens(str(tmp_path / "absent"))


def test_no_tokens_refuses_to_start_unless_insecure(monkeypatch):
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    with pytest.raises(UserError, match="--insecure-no-auth"):
        Authenticator(load_tokens(None))
    assert not Authenticator(load_tokens(None), insecure_no_auth=True).required


def test_private_tempdir_is_0700_and_removed_even_on_error(tmp_path):
    parent = tmp_path / "uploads"
    with pytest.raises(RuntimeError), private_tempdir(str(parent)) as folder:
        (folder / "interview.mp4").write_bytes(b"media")
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        raise RuntimeError("decoder failed")
    assert parent.exists() and list(parent.iterdir()) == []


def test_local_video_paths_only_inside_allowed_roots(tmp_path):
    allowed = tmp_path / "videos"
    allowed.mkdir()
    video = allowed / "a.mp4"
    video.write_bytes(b"x")
    assert local_video_path(str(video), [str(allowed)]) == video.resolve()
    assert local_video_path(f"file://{video}", [str(allowed)]) == video.resolve()
    assert local_video_path("s3://bucket/a.mp4", []) is None
    with pytest.raises(ForbiddenPath):
        local_video_path(str(video), [])
    with pytest.raises(ForbiddenPath):
        local_video_path(str(allowed / ".." / "secret.mp4"), [str(allowed)])
    with pytest.raises(UserError, match="no such file"):
        local_video_path(str(allowed / "missing.mp4"), [str(allowed)])


def test_serve_command_refuses_to_start_without_tokens_or_bundle(tmp_path, monkeypatch, capsys):
    """Both checks come before Ray or Serve start: a one-line error and exit code 2."""
    from mllm_dr.cli import main

    monkeypatch.delenv(TOKENS_ENV, raising=False)
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no API tokens")
    monkeypatch.setenv(TOKENS_ENV, "a-token")
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "is not a model bundle" in capsys.readouterr().err
