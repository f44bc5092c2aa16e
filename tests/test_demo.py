"""The demo is the platform's main job: run it for real (smaller), so it cannot rot."""

import json

import pyarrow.parquet as pq
import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(cli, tmp_path):
    workdir = tmp_path / "demo"
    result = cli("demo", "--workdir", str(workdir), "--interviews", "5", "--epochs", "1", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Demo finished" in result.stdout and str(workdir) in result.stdout

    manifest = json.loads((workdir / "store" / "manifest.json").read_text())
    assert manifest["counts"]["total"]["ok"] == 10
    assert {site: c["ok"] for site, c in manifest["counts"]["by_site"].items()} == {"north": 5, "south": 5}
    rows = pq.read_table(workdir / "store" / "records", columns=["site", "status"]).to_pylist()
    assert sorted({r["site"] for r in rows}) == ["north", "south"] and all(r["status"] == "ok" for r in rows)
    assert len(rows) == 10

    bundle = workdir / "runs" / "demo" / "bundle"
    assert json.loads((bundle / "mllm_dr.json").read_text())["questionnaire"] == "phq8"
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert {"mae", "rmse", "ccc", "baseline_mae", "baseline_rmse"} <= report.keys()

    assessment = json.loads((workdir / "serve" / "assessment.json").read_text())
    scores = [item["score"] for item in assessment["items"]]
    assert len(scores) == 8 and all(0 <= s <= 3 for s in scores) and assessment["total"] == sum(scores)
    assert all(item["rationale"] for item in assessment["items"])
