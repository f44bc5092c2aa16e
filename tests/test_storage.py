import pytest

from mllm_dr.errors import UserError
from mllm_dr.storage import resolve


def test_local_paths_and_file_uris_resolve_to_the_same_place(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    for uri in (str(tmp_path / "a.txt"), f"file://{tmp_path}/a.txt"):
        loc = resolve(uri)
        assert loc.protocol == "file" and loc.read_text() == "hello" and loc.uri == str(tmp_path / "a.txt")


def test_list_files_is_sorted_recursive_and_skips_hidden(tmp_path):
    for name in ("b/2.mp4", "a.mp4", ".hidden/x.mp4", "b/.x.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    names = [loc.path[len(str(tmp_path)) + 1:] for loc in resolve(str(tmp_path)).list_files()]
    assert names == ["a.mp4", "b/2.mp4"]


@pytest.mark.parametrize("uri, message", [("", "empty URI"), ("gs://bucket/x", "unsupported URI scheme"),
                                          ("s3://", "needs a bucket")])
def test_bad_uris_are_one_line_errors(uri, message):
    with pytest.raises(UserError, match=message):
        resolve(uri)


def test_missing_local_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "nope")).list_files()


def test_s3_round_trip_through_a_real_server(s3_server):
    bucket = s3_server.make_bucket("storage-test")
    loc = resolve(f"{bucket}/dir/file.bin")
    loc.write_bytes(b"\x00\x01payload")
    assert resolve(f"{bucket}/dir/file.bin").read_bytes() == b"\x00\x01payload"
    assert [f.uri for f in resolve(f"{bucket}/dir").list_files()] == ["s3://storage-test/dir/file.bin"]
    assert resolve(f"{bucket}/dir").arrow_filesystem().get_file_info("storage-test/dir/file.bin").size == 9


def test_s3_without_credentials_is_a_user_error(s3_server, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="S3 error"):
        resolve("s3://storage-test/anything").list_files()
