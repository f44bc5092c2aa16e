from collections import Counter, defaultdict

import pytest

from mllm_dr.config import PreprocessConfig, load_config
from mllm_dr.data.sources import InterviewInput
from mllm_dr.data.splits import assign_splits, normalize_split
from mllm_dr.errors import UserError


def _inputs(site, n, subjects=None, split=None):
    return [InterviewInput(interview_id=f"i{k}", site=site, format="videos", source_uri=f"/{site}/{k}.mp4",
                           subject_id=None if subjects is None else f"s{k % subjects}", split=split)
            for k in range(n)]


def _config(**corpus):
    return load_config(PreprocessConfig, overrides=[f"corpus.{k}={v}" for k, v in corpus.items()])


def _split_of_subject(inputs):
    seen = defaultdict(set)
    for item in inputs:
        seen[(item.site, item.subject_id or item.interview_id)].add(item.split)
    return seen


def test_hashed_subject_split_is_deterministic_keeps_subjects_whole_and_follows_fractions():
    inputs = assign_splits(_inputs("a", 600, subjects=300), PreprocessConfig())
    assert all(len(splits) == 1 for splits in _split_of_subject(inputs).values())
    counts = Counter(item.split for item in inputs)
    assert counts["train"] == pytest.approx(420, abs=50) and counts["dev"] == pytest.approx(90, abs=30)
    again = assign_splits(list(reversed(_inputs("a", 600, subjects=300))), PreprocessConfig())
    assert {i.interview_id: i.split for i in inputs} == {i.interview_id: i.split for i in again}
    other_seed = assign_splits(_inputs("a", 600, subjects=300), _config(split_seed=1))
    assert [i.split for i in other_seed] != [i.split for i in inputs]


def test_own_split_is_kept_and_shared_by_the_subject():
    inputs = _inputs("a", 4, subjects=2)
    inputs[0].split = "Validation"  # subject s0: i0 (dev) and i2 (no split of its own)
    assign_splits(inputs, PreprocessConfig())
    assert inputs[0].split == inputs[2].split == "dev"


def test_conflicting_splits_of_one_subject_become_problems():
    inputs = _inputs("a", 4, subjects=2)
    inputs[0].split, inputs[2].split = "train", "test"
    assign_splits(inputs, PreprocessConfig())
    assert inputs[0].problem == inputs[2].problem == "subject 's0' of site 'a' is in more than one split (test, train)"
    assert inputs[1].problem is None and inputs[1].split == inputs[3].split


def test_interview_ids_are_namespaced_by_site_and_must_be_unique_within_one():
    same_id_other_site = InterviewInput(interview_id="i1", site="b", format="videos", source_uri="/b/1.mp4")
    assign_splits([*_inputs("a", 2), same_id_other_site], PreprocessConfig())
    duplicate = InterviewInput(interview_id="i1", site="a", format="videos", source_uri="/other/1.mp4")
    with pytest.raises(UserError, match=r"unique within a site: a/i1 \(/a/1.mp4 and /other/1.mp4\)"):
        assign_splits([*_inputs("a", 2), duplicate], PreprocessConfig())


def test_leave_one_site_out():
    a, b = _inputs("a", 50, subjects=25, split="train"), _inputs("b", 40)
    b[0].split, b[1].split = "dev", "test"
    assign_splits([*a, *b], _config(leave_site_out="a"))
    assert {i.split for i in a} == {"test"}
    assert b[0].split == "dev" and b[1].split in ("train", "dev")  # b's own test joins train/dev
    assert {i.split for i in b} == {"train", "dev"}


@pytest.mark.parametrize("corpus, message", [
    ({"leave_site_out": "nowhere"}, "not a site of this run"),
    ({"split_fractions": "[0.5, 0.2, 0.2]"}, "summing to 1"),
])
def test_bad_split_options(corpus, message):
    with pytest.raises(UserError, match=message):
        assign_splits(_inputs("a", 3), _config(**corpus))


def test_unknown_split_name_is_a_problem_row():
    inputs = _inputs("a", 2)
    inputs[0].split = "holdout"
    assign_splits(inputs, PreprocessConfig())
    assert inputs[0].problem == "unknown split 'holdout' (use train, dev or test)"
    assert normalize_split(" TEST ") == "test" and normalize_split("") is None


# --- end to end: four formats, four sites, local disk and two S3 buckets, one pipeline run --------------


@pytest.fixture(scope="module")
def multisite_run(tmp_path_factory, s3_server, ray_local):
    """london = E-DAIC (local, --source), usc = DAIC-WOZ (local, --source), beijing = CMDC (S3 bucket,
    ``sites:`` in the config file), clinic = a manifest (another S3 bucket, ``sites:``), 3 subjects x 2
    interviews and no splits of its own. One run of the real pipeline on the shared local Ray."""
    import hashlib

    import yaml
    from corpus_trees import cmdc_tree, daicwoz_tree, edaic_tree, write_wav

    from mllm_dr.data.preprocess import run_preprocess
    from mllm_dr.storage import resolve

    base = tmp_path_factory.mktemp("multisite")
    written = {"edaic": edaic_tree(base / "edaic"), "daicwoz": daicwoz_tree(base / "daicwoz"),
               "cmdc": cmdc_tree(base / "cmdc", questions=2)}
    clinic = base / "clinic"
    rows = ["interview_id,subject_id,audio,item_scores"]
    for k in range(6):
        write_wav(clinic / "audio" / f"v{k}.wav", 0.5, freq=300 + 40 * k)
        rows.append(f"v{k},patient-{k // 2},audio/v{k}.wav,{' '.join(str(k % 4) for _ in range(8))}")
    (clinic / "manifest.csv").write_text("\n".join(rows) + "\n")
    for bucket, local in (("site-b", base / "cmdc"), ("site-c", clinic)):
        target = resolve(s3_server.make_bucket(bucket))
        target.fs.put(str(local) + "/", f"{bucket}/data/", recursive=True)
    config_file = base / "preprocess.yaml"
    config_file.write_text(yaml.safe_dump({
        "sites": ["beijing=cmdc:s3://site-b/data", "clinic=manifest:s3://site-c/data/manifest.csv"],
        "corpus": {"split_seed": 3}}))
    config = load_config(PreprocessConfig, config_file)
    store = base / "store"
    summary = run_preprocess([f"london=edaic:{base / 'edaic'}", f"usc=daicwoz:{base / 'daicwoz'}"], str(store),
                             config, progress=False)
    records = {r.key: r for r in read_records_of(store)}
    wav_sha = hashlib.sha256((clinic / "audio/v0.wav").read_bytes()).hexdigest()
    return summary, records, json_of(store / "manifest.json"), written, wav_sha


def read_records_of(store):
    from mllm_dr.data.records import read_records
    from mllm_dr.storage import resolve

    return read_records(resolve(str(store)))


def json_of(path):
    import json

    return json.loads(path.read_text())


def test_every_input_is_one_row_tagged_with_its_site(multisite_run):
    summary, records, manifest, _, _ = multisite_run
    assert summary.inputs == len(records) == 6 + 4 + 3 + 6
    assert manifest["counts"]["by_site"] == {
        "beijing": {"ok": 2, "error": 1, "rows": 3}, "clinic": {"ok": 6, "error": 0, "rows": 6},
        "london": {"ok": 2, "error": 4, "rows": 6}, "usc": {"ok": 3, "error": 1, "rows": 4}}
    assert set(manifest["sources"]) == {"beijing=cmdc:s3://site-b/data", "london=edaic:" + records[
        "london/300"].source_uri.rsplit("/data/300_P", 1)[0], "clinic=manifest:s3://site-c/data/manifest.csv",
        "usc=daicwoz:" + records["usc/300"].source_uri.rsplit("/300_P", 1)[0]}
    # Interview ids are namespaced by site: E-DAIC's 300 and DAIC-WOZ's 300 are two interviews.
    assert records["london/300"].video.shape[1] == 2048 and records["usc/300"].video.shape[1] == 174


def test_no_subject_crosses_splits_and_corpus_splits_are_kept(multisite_run):
    _, records, _, written, _ = multisite_run
    clinic = [r for key, r in records.items() if key.startswith("clinic/")]
    by_subject = defaultdict(set)
    for r in clinic:
        by_subject[int(r.interview_id[1:]) // 2].add(r.split)
    assert all(len(splits) == 1 and splits <= {"train", "dev", "test"} for splits in by_subject.values())
    assert [records[f"london/{pid}"].split for pid in ("300", "301")] == ["train", "dev"]
    assert [records[f"usc/{pid}"].split for pid in ("300", "301", "310")] == ["train", "dev", "test"]
    assert records["london/300"].item_scores == written["edaic"]["items"][300]


def test_s3_sites_load_and_carry_provenance(multisite_run):
    _, records, manifest, written, wav_sha = multisite_run
    v0 = records["clinic/v0"]
    assert v0.source_uri == "s3://site-c/data/audio/v0.wav" and v0.source_sha256 == wav_sha
    assert v0.item_scores == [0] * 8 and v0.audio.shape[1] == 80
    hc = records["beijing/HC01"]
    assert hc.source_uri == "s3://site-b/data/HC/HC01/Q1.wav" and hc.questionnaire == "phq9"
    assert [t.speaker for t in hc.transcript] == ["interviewer", "participant"] * 2
    assert hc.duration_s == pytest.approx(sum(written["cmdc"]["durations"][("HC01", q)] for q in (1, 2)), abs=0.01)
    assert records["beijing/MDD02"].error == "subject MDD02 is listed in labels.csv but has no answer files"
    assert manifest["encoders"]["audio"]["dim"] == 80
