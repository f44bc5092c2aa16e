"""DAIC-WOZ (``daicwoz:URI``): the AVEC 2016/2017 Distress Analysis Interview Corpus (Wizard of Oz).

Layout (unpacked anywhere below URI)::

    300_P/300_AUDIO.wav              interview audio (required: hashed, gives the duration)
    300_P/300_TRANSCRIPT.csv         tab-separated start_time, stop_time, speaker (Ellie / Participant), value
    300_P/300_CLNF_features.txt      frame, timestamp, confidence, success, then 68 2-D landmarks (x0..x67, y0..y67)
    300_P/300_CLNF_AUs.txt           ... action units;  300_CLNF_pose.txt: head pose;  300_CLNF_gaze.txt: gaze
    train_split_Depression_AVEC2017.csv, dev_split_Depression_AVEC2017.csv
                                     Participant_ID, PHQ8_Binary, PHQ8_Score, Gender, PHQ8_NoInterest ... PHQ8_Moving
    test_split_Depression_AVEC2017.csv, full_test_split.csv
                                     test participants; totals only (item_scores stay empty)

The visual features are the CLNF files named in ``config.corpus.clnf_streams`` joined on their frame numbers
(frames all of them have), in that order; frames where tracking failed stay as zero rows
(:mod:`~mllm_dr.data.corpora.openface`). A session missing one of the chosen CLNF files has no visual
modality (its width would differ from every other session's); a missing transcript gives an empty transcript.
Transcript quirks (blank values, overlapping turns, ``<laughter>``, ``[scrubbed_entry]``) are handled by
:func:`mllm_dr.data.transcripts.parse_transcript`. Released item scores are kept even where their sum
differs from the released total, which is kept as the subject's total.
"""

from __future__ import annotations

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.corpora.openface import align_frames, read_frame_table
from mllm_dr.data.corpora.participants import discover_participants, load_audio_and_transcript
from mllm_dr.data.sources import InterviewInput, RawInterview
from mllm_dr.errors import UserError
from mllm_dr.storage import Location, resolve

SPLIT_FILES = {
    "train_split_depression_avec2017.csv": "train",
    "dev_split_depression_avec2017.csv": "dev",
    "test_split_depression_avec2017.csv": "test",
    "full_test_split.csv": "test",
}
TOTAL_COLUMNS = ("phq8score", "phqscore")
CLNF_STREAMS = ("features", "features3D", "AUs", "pose", "gaze")


def _roles(pid: str) -> dict[str, str]:
    return {"audio": f"{pid}_audio.wav", "transcript": f"{pid}_transcript.csv",
            **{f"clnf_{stream}": f"{pid}_clnf_{stream.lower()}.txt" for stream in CLNF_STREAMS}}


class DaicWozFormat:
    name = "daicwoz"

    def discover(self, root: Location, site: str, config: PreprocessConfig) -> list[InterviewInput]:
        return discover_participants(root, site, self.name, SPLIT_FILES, TOTAL_COLUMNS, _roles)

    def load(self, item: InterviewInput, config: PreprocessConfig) -> RawInterview:
        raw = load_audio_and_transcript(item, config)
        streams = config.corpus.clnf_streams
        if all(f"clnf_{stream}" in item.files for stream in streams):
            tables = [read_frame_table(resolve(item.files[f"clnf_{stream}"])) for stream in streams]
            try:
                joined = align_frames(tables)
            except UserError as exc:
                raise UserError(f"participant {item.interview_id}: CLNF {', '.join(streams)}: {exc}") from None
            raw.visual_features, raw.visual_features_rate = joined.features, joined.rate
            raw.visual_features_name = f"daicwoz-clnf-{'+'.join(streams)}"
        return raw


FORMAT = DaicWozFormat()
