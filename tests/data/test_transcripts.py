"""Transcript parsing: every sidecar format, the released corpora's layouts and quirks, malformed input."""

from __future__ import annotations

import json

import pytest

from mllm_dr.data.transcripts import (
    INTERVIEWER,
    PARTICIPANT,
    Turn,
    normalise_speaker,
    parse_transcript,
    parse_transcript_bytes,
    question_answer_turns,
    read_text,
    turns_from_json,
)
from mllm_dr.errors import UserError


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --- released corpora ------------------------------------------------------------------------------------


def test_daicwoz_transcript_tab_separated_with_quirks(tmp_path):
    # The real layout: a .csv that is tab-separated; Ellie and Participant; blank values, a row missing its
    # value cell, overlapping turns out of order, annotations, a stray quote and a tab inside speech.
    content = (
        "start_time\tstop_time\tspeaker\tvalue\n"
        "36.588\t39.668\tEllie\thi i'm ellie thanks for coming in today <sync>\n"
        "40.128\t41.000\tEllie\t<synch>\n"
        "44.950\t46.120\tParticipant\t<laughter> good [scrubbed_entry] \n"
        "42.000\t45.500\tParticipant\tumm \"fine i\tguess\n"
        "47.000\t48.000\tParticipant\t\n"
        "48.500\t49.000\tParticipant\n"
        "\n"
        "50.000\t52.250\tEllie\twhere are you from originally\n"
    )
    turns = parse_transcript(write(tmp_path, "300_TRANSCRIPT.csv", content))
    assert turns == [
        Turn(36.588, 39.668, INTERVIEWER, "hi i'm ellie thanks for coming in today"),
        Turn(42.0, 45.5, PARTICIPANT, 'umm "fine i guess'),  # whitespace collapsed
        Turn(44.95, 46.12, PARTICIPANT, "[laughter] good [scrubbed_entry]"),
        Turn(50.0, 52.25, INTERVIEWER, "where are you from originally"),
    ]


def test_annotations_can_be_stripped(tmp_path):
    content = "start_time\tstop_time\tspeaker\tvalue\n1\t2\tParticipant\t<laughter> good [Scrubbed_Entry]\n" \
              "3\t4\tParticipant\t<sigh>\n"
    turns = parse_transcript(write(tmp_path, "301_TRANSCRIPT.csv", content), annotations="strip")
    assert turns == [Turn(1.0, 2.0, PARTICIPANT, "good")]


def test_edaic_transcript_has_no_speaker_so_all_participant(tmp_path):
    content = ("Start_Time,End_Time,Text,Confidence\n"
               "62.2,63.1,i'm doing okay,0.93\n"
               "64.0,69.5,\"well, i sleep badly\",0.88\n"
               "70.0,70.4,,0.1\n")
    turns = parse_transcript(write(tmp_path, "386_Transcript.csv", content))
    assert turns == [Turn(62.2, 63.1, PARTICIPANT, "i'm doing okay"),
                     Turn(64.0, 69.5, PARTICIPANT, "well, i sleep badly")]


def test_cmdc_question_answer_turns():
    turns = question_answer_turns("你最近睡眠怎么样？", " 睡得不太好， 经常早醒 ", 12.0, 30.5)
    assert turns == [Turn(12.0, 12.0, INTERVIEWER, "你最近睡眠怎么样？"),
                     Turn(12.0, 30.5, PARTICIPANT, "睡得不太好， 经常早醒")]
    assert question_answer_turns("问题", "", 0.0, 1.0) == [Turn(0.0, 0.0, INTERVIEWER, "问题")]
    with pytest.raises(UserError, match="start <= end"):
        question_answer_turns("q", "a", 5.0, 1.0)


def test_cmdc_answer_text_in_gb18030_is_decoded(tmp_path):
    path = write(tmp_path, "Q3.txt", "我最近没什么兴趣做事情".encode("gb18030"))
    assert read_text(path) == "我最近没什么兴趣做事情"


# --- sidecar formats -------------------------------------------------------------------------------------


def test_csv_column_aliases_clock_times_and_speaker_names(tmp_path):
    content = ("Utterance;Speaker;Begin;End_Time\n"
               "How have you been?;Doctor;00:00:01.500;00:00:03\n"
               "Tired.;Patient;00:00:03,200;00:00:04.000\n"
               "Who else is here?;Speaker 3;5;6\n")
    turns = parse_transcript(write(tmp_path, "a.csv", content))
    assert turns == [Turn(1.5, 3.0, INTERVIEWER, "How have you been?"), Turn(3.2, 4.0, PARTICIPANT, "Tired."),
                     Turn(5.0, 6.0, "Speaker 3", "Who else is here?")]


def test_tsv_and_headerless_csv(tmp_path):
    tsv = "start\tend\trole\ttext\n0\t1.5\ttherapist\thello\n1.5\t2\tclient\thi\n"
    assert parse_transcript(write(tmp_path, "a.tsv", tsv)) == [Turn(0.0, 1.5, INTERVIEWER, "hello"),
                                                               Turn(1.5, 2.0, PARTICIPANT, "hi")]
    headerless = "0.0,1.0,Interviewer,hello\n1.0,2.0,Participant,hi there\n"
    assert parse_transcript(write(tmp_path, "b.csv", headerless)) == [Turn(0.0, 1.0, INTERVIEWER, "hello"),
                                                                      Turn(1.0, 2.0, PARTICIPANT, "hi there")]


def test_srt_with_markup_and_speaker_prefixes(tmp_path):
    content = ("1\r\n00:00:01,000 --> 00:00:02,500\r\n<i>Interviewer:</i> How do you\r\nfeel today?\r\n\r\n"
               "2\r\n00:00:03,000 --> 00:00:05,000\r\n{\\an8}Not great [sigh]\r\n\r\n"
               "3\r\n00:00:05,500 --> 00:00:06,000\r\n<sync>\r\n")
    assert parse_transcript(write(tmp_path, "a.srt", content)) == [
        Turn(1.0, 2.5, INTERVIEWER, "How do you feel today?"),
        Turn(3.0, 5.0, PARTICIPANT, "Not great [sigh]"),
    ]


def test_vtt_voice_tags_notes_and_short_timestamps(tmp_path):
    content = ("WEBVTT - interview\n\nNOTE exported by a tool\n\nSTYLE\n::cue { color: white }\n\n"
               "q1\n00:01.000 --> 00:02.000 align:start position:10%\n<v Ellie>How are you?</v>\n\n"
               "00:02.500 --> 01:00:03.000\n<v.loud Participant>Okay <c.yellow>I</c> guess</v>\n\n"
               "00:04.000 --> 00:05.000\n医生：最近睡得好吗？\n")
    assert parse_transcript(write(tmp_path, "a.vtt", content)) == [
        Turn(1.0, 2.0, INTERVIEWER, "How are you?"),
        Turn(2.5, 3603.0, PARTICIPANT, "Okay I guess"),
        Turn(4.0, 5.0, INTERVIEWER, "最近睡得好吗？"),
    ]


def test_json_shapes(tmp_path):
    turns = [{"start": 3, "end": 4.5, "speaker": "participant", "text": "fine"},
             {"start_time": "00:00:01", "stop_time": 2, "role": "Ellie", "utterance": "hi"},
             {"text": "no timing, follows the previous turn"}]
    expected = [Turn(1.0, 2.0, INTERVIEWER, "hi"),
                Turn(2.0, 2.0, PARTICIPANT, "no timing, follows the previous turn"),
                Turn(3.0, 4.5, PARTICIPANT, "fine")]
    assert parse_transcript(write(tmp_path, "a.json", json.dumps(turns))) == expected
    # Whisper-style output: {"segments": [{"start", "end", "text"}]}
    whisper = {"text": "ignored", "segments": [{"id": 0, "start": 0.0, "end": 2.0, "text": " hello there"}]}
    assert parse_transcript_bytes(json.dumps(whisper).encode(), "json") == [
        Turn(0.0, 2.0, PARTICIPANT, "hello there")]
    assert turns_from_json({"transcript": turns[:1]}) == [Turn(3.0, 4.5, PARTICIPANT, "fine")]


def test_txt_speaker_lines_and_plain_lines(tmp_path):
    content = "Interviewer: How are you?\nP: Not well.\nI keep waking up at 4am.\n\nEllie: I see.\n"
    assert parse_transcript(write(tmp_path, "a.txt", content)) == [
        Turn(0.0, 0.0, INTERVIEWER, "How are you?"),
        Turn(0.0, 0.0, PARTICIPANT, "Not well."),
        Turn(0.0, 0.0, PARTICIPANT, "I keep waking up at 4am."),
        Turn(0.0, 0.0, INTERVIEWER, "I see."),
    ]
    plain = "i have been feeling down\nand i told my sister: nothing helps\n"
    assert [t.speaker for t in parse_transcript_bytes(plain.encode(), ".TXT")] == [PARTICIPANT, PARTICIPANT]
    assert parse_transcript_bytes(plain.encode(), "txt")[1].text == "and i told my sister: nothing helps"


def test_encodings_bom_utf16_and_gb18030():
    text = "speaker,text\n患者,我很累\n"
    for data in (text.encode("utf-8-sig"), text.encode("utf-16"), text.encode("gb18030")):
        assert parse_transcript_bytes(data, "csv") == [Turn(0.0, 0.0, PARTICIPANT, "我很累")]


def test_speaker_normalisation():
    interviewers = ("Ellie", "THERAPIST", "doctor", "医生", "Virtual Agent")
    assert [normalise_speaker(s) for s in interviewers] == [INTERVIEWER] * 5
    assert [normalise_speaker(s) for s in ("Participant", "patient", "患者", "", None)] == [PARTICIPANT] * 5
    assert normalise_speaker(" Mother ") == "Mother"


def test_empty_and_header_only_files_are_empty_transcripts(tmp_path):
    assert parse_transcript(write(tmp_path, "a.csv", b"")) == []
    assert parse_transcript(write(tmp_path, "b.csv", "start_time\tstop_time\tspeaker\tvalue\n")) == []
    assert parse_transcript(write(tmp_path, "c.json", "[]")) == []


# --- malformed input -------------------------------------------------------------------------------------

SECRET = "i think about ending it"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bad.csv", f"foo,bar\nx,{SECRET}\n", "no text column"),
        ("bad_time.tsv", f"start\tend\ttext\nsoon\t2\t{SECRET}\n", "row 2: start time is not a number"),
        ("bad.json", '[{"text": "' + SECRET + '"', "not valid JSON"),
        ("shape.json", json.dumps({"words": SECRET}), "list of turns"),
        ("item.json", json.dumps([SECRET]), "turn 1: not an object"),
        ("time.json", json.dumps([{"start": True, "text": SECRET}]), "turn 1: start time"),
        ("text.json", json.dumps([{"text": [SECRET]}]), "turn 1: text is not a string"),
        ("notime.srt", f"1\n{SECRET}\n", "cue 1 has no 'start --> end'"),
        ("badtime.vtt", f"WEBVTT\n\n00:01 --> later\n{SECRET}\n", "cue 1: timing"),
        ("binary.csv", b"PK\x03\x04\x00\x00\x14\x00" + bytes(range(256)), "binary data"),
        ("latin1.txt", f"caf\u00e9 {SECRET}".encode("latin-1"), "not UTF-8 or GB18030"),
    ],
)
def test_malformed_files_raise_one_line_errors_without_content(tmp_path, name, content, reason):
    with pytest.raises(UserError) as error:
        parse_transcript(write(tmp_path, name, content))
    message = str(error.value)
    assert reason in message and name in message
    assert "\n" not in message and SECRET not in message


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unsupported transcript format 'docx'"):
        parse_transcript_bytes(b"hello", "docx")
    with pytest.raises(UserError, match="no file suffix"):
        parse_transcript(write(tmp_path, "transcript", "hello"))
    with pytest.raises(UserError, match="not found"):
        parse_transcript(tmp_path / "missing.csv")


def test_reads_from_s3(s3_server):
    from mllm_dr.storage import resolve

    bucket = s3_server.make_bucket("transcripts")
    location = resolve(f"{bucket}/site/300_TRANSCRIPT.csv")
    location.write_text("start_time\tstop_time\tspeaker\tvalue\n1\t2\tParticipant\tyes\n")
    assert parse_transcript(f"{bucket}/site/300_TRANSCRIPT.csv") == [Turn(1.0, 2.0, PARTICIPANT, "yes")]
    assert parse_transcript(location) == [Turn(1.0, 2.0, PARTICIPANT, "yes")]
