import pytest

from mllm_dr.data.sources import SourceSpec, parse_source
from mllm_dr.errors import UserError


@pytest.mark.parametrize("text, spec", [
    ("/data/videos", SourceSpec("default", "videos", "/data/videos")),
    ("videos:/data", SourceSpec("default", "videos", "/data")),
    ("s3://bucket/prefix", SourceSpec("default", "videos", "s3://bucket/prefix")),
    ("london=edaic:s3://bucket/edaic", SourceSpec("london", "edaic", "s3://bucket/edaic")),
    ("site_b=/mnt/x=y", SourceSpec("site_b", "videos", "/mnt/x=y")),
    ("beijing=cmdc:file:///data/cmdc", SourceSpec("beijing", "cmdc", "file:///data/cmdc")),
])
def test_parse_source(text, spec):
    assert parse_source(text) == spec


@pytest.mark.parametrize("text, message", [("mp4:/data", "unknown format"), ("bad site=/x", "site names"),
                                           ("edaic:", "no URI")])
def test_bad_sources(text, message):
    with pytest.raises(UserError, match=message):
        parse_source(text)
