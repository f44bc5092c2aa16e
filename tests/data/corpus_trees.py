"""Writers of small corpus trees in the released layouts, with real headers, real files and real quirks.

Shared by tests/data/test_corpora_*.py and test_multisite.py. Everything is deterministic; media are real
(WAV through the ``wave`` module, MP4 through PyAV, .mat through scipy and h5py).
"""

from __future__ import annotations

import wave
from pathlib import Path

import h5py
import numpy as np
import scipy.io

RATE = 16_000
EDAIC_OPENFACE_COLUMNS = (
    ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    + ["gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z", "gaze_angle_x", "gaze_angle_y"]
    + [f"AU{n:02d}_r" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)]
    + [f"AU{n:02d}_c" for n in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)]
)
assert len(EDAIC_OPENFACE_COLUMNS) == 49
CLNF_COLUMNS = {
    "features": [f"x{i}" for i in range(68)] + [f"y{i}" for i in range(68)],
    "AUs": [f"AU{n:02d}_r" for n in (1, 2, 4, 5, 6, 9, 10, 12, 14, 15, 17, 20, 25, 26)]
    + [f"AU{n:02d}_c" for n in (4, 12, 15, 23, 28, 45)],
    "pose": ["Tx", "Ty", "Tz", "Rx", "Ry", "Rz"],
    "gaze": ["x_0", "y_0", "z_0", "x_1", "y_1", "z_1", "x_h0", "y_h0", "z_h0", "x_h1", "y_h1", "z_h1"],
}
# E-DAIC Detailed_PHQ8_Labels.csv / DAIC-WOZ split columns, in the questionnaire's item order.
EDAIC_ITEMS = ["PHQ_8NoInterest", "PHQ_8Depressed", "PHQ_8Sleep", "PHQ_8Tired", "PHQ_8Appetite", "PHQ_8Failure",
               "PHQ_8Concentrating", "PHQ_8Moving"]
DAIC_ITEMS = [c.replace("PHQ_8", "PHQ8_") for c in EDAIC_ITEMS]


def write_wav(path: Path, seconds: float, freq: float = 220.0, rate: int = RATE) -> np.ndarray:
    """A real 16-bit PCM mono WAV of a sine tone; returns the samples as float32 in [-1, 1]."""
    t = np.arange(round(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return pcm.astype(np.float32) / 32768


def write_frame_table(path: Path, columns: list[str], n_frames: int, fps: float = 30.0, seed: int = 0,
                      failed: tuple[int, ...] = (), blank: tuple[int, ...] = (), first_frame: int = 1) -> np.ndarray:
    """An OpenFace/CLNF table (``frame, timestamp, confidence, success, ...`` with OpenFace's ", " separator).

    Rows in ``failed`` have success 0 (and zeros, as OpenFace writes them); rows in ``blank`` have an empty
    first value. Returns the feature matrix as written (before any zeroing by the reader).
    """
    rng = np.random.default_rng(seed)
    values = rng.uniform(1, 2, size=(n_frames, len(columns))).round(3)
    lines = [", ".join(["frame", "timestamp", "confidence", "success", *columns])]
    for i in range(n_frames):
        ok = i not in failed
        cells = [f"{v:g}" for v in (values[i] if ok else np.zeros(len(columns)))]
        if i in blank:
            cells[0] = ""
        lines.append(", ".join([str(first_frame + i), f"{i / fps:.3f}", "0.98" if ok else "0", "1" if ok else "0",
                                *cells]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return values


def write_mat_v5(path: Path, matrix: np.ndarray, key: str = "feature") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {key: matrix})


def write_mat_v73(path: Path, matrix: np.ndarray, key: str = "feature") -> None:
    """What MATLAB's ``save -v7.3`` writes: HDF5 after a 512-byte text header, arrays stored column-major
    (so an N x D matrix is an HDF5 dataset of shape D x N)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(key, data=np.ascontiguousarray(matrix.T))
        f[key].attrs["MATLAB_class"] = np.bytes_("single")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b" "))


def write_csv(path: Path, header: list[str], rows: list[list[object]], sep: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sep.join(str(c) for c in line) for line in [header, *rows]) + "\n")


# --- E-DAIC-WOZ ------------------------------------------------------------------------------------------


def edaic_tree(root: Path, seconds: float = 2.0) -> dict:
    """Participants 300 (classic .mat), 301 (v7.3 .mat, no transcript), 302 (listed, no folder),
    303 (still zipped), 304 (folder without audio), 305 (corrupt .mat). Returns what was written."""
    written: dict = {"resnet": {}, "openface": {}, "waveform": {}}
    for pid, mat_writer in ((300, write_mat_v5), (301, write_mat_v73), (304, write_mat_v5), (305, None)):
        folder = root / "data" / f"{pid}_P"
        if pid != 304:
            written["waveform"][pid] = write_wav(folder / f"{pid}_AUDIO.wav", seconds, freq=200 + pid)
        if pid != 301:
            write_csv(folder / f"{pid}_Transcript.csv", ["Start_Time", "End_Time", "Text", "Confidence"],
                      [[0.1, 0.9, "i'm doing okay", 0.93], [1.0, 1.8, "<laughter> i sleep badly", 0.88]])
        n = int(seconds * 15)
        resnet = np.random.default_rng(pid).normal(size=(n, 2048)).astype(np.float32)
        if mat_writer is not None:
            mat_writer(folder / "features" / f"{pid}_CNN_ResNet.mat", resnet)
            written["resnet"][pid] = resnet
        else:
            (folder / "features").mkdir(parents=True, exist_ok=True)
            (folder / "features" / f"{pid}_CNN_ResNet.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated" * 3)
        written["openface"][pid] = write_frame_table(
            folder / "features" / f"{pid}_OpenFace2.1.0_Pose_gaze_AUs.csv", EDAIC_OPENFACE_COLUMNS,
            int(seconds * 30), seed=pid, failed=(3, 4))
    (root / "data" / "303_P.tar.gz").write_bytes(b"\x1f\x8b not really")
    labels = root / "labels"
    split_header = ["Participant_ID", "Gender", "PHQ_Binary", "PHQ_Score", "PCL-C (PTSD)", "PTSD Severity"]
    write_csv(labels / "train_split.csv", split_header, [[300, "male", 1, 13, 0, 20], [303, "male", 0, 2, 0, 18]])
    write_csv(labels / "dev_split.csv", split_header, [[301, "female", 0, 4, 0, 30], [302, "male", 0, 0, 0, 17]])
    write_csv(labels / "test_split.csv", split_header, [[304, "female", 0, 3, 0, 19], [305, "male", 0, 1, 0, 20]])
    # Columns deliberately not in questionnaire order: the reader must map them by name.
    order = [7, 0, 3, 1, 6, 2, 5, 4]
    items = {300: [1, 2, 3, 0, 1, 2, 3, 1], 301: [0, 1, 0, 1, 0, 1, 0, 1]}
    write_csv(labels / "Detailed_PHQ8_Labels.csv", ["Participant_ID"] + [EDAIC_ITEMS[i] for i in order],
              [[pid] + [scores[i] for i in order] for pid, scores in items.items()])
    written["items"] = items
    return written


# --- DAIC-WOZ --------------------------------------------------------------------------------------------

DAIC_TRANSCRIPT = [
    ("start_time", "stop_time", "speaker", "value"),
    ("0.10", "0.90", "Ellie", "IntroV4Confirmation (hi i'm ellie thanks for coming in today)"),
    ("0.80", "1.40", "Participant", "hi <laughter>"),  # overlaps Ellie's turn, as real sessions do
    ("1.40", "", "Participant", "[scrubbed_entry] is where i live"),  # blank stop time
    ("1.50", "1.90", "Ellie", ""),  # blank value
]


def daicwoz_tree(root: Path, seconds: float = 2.0) -> dict:
    """Participants 300 (train, all files; gaze one frame short), 301 (dev, no CLNF gaze, no transcript),
    310 (test, totals only) and 311 (test, corrupt pose file)."""
    written: dict = {"clnf": {}}
    n = int(seconds * 30)
    for pid in (300, 301, 310, 311):
        folder = root / f"{pid}_P"
        write_wav(folder / f"{pid}_AUDIO.wav", seconds, freq=150 + pid)
        if pid != 301:
            (folder / f"{pid}_TRANSCRIPT.csv").write_text("\n".join("\t".join(r) for r in DAIC_TRANSCRIPT) + "\n")
        written["clnf"][pid] = {}
        for index, (stream, columns) in enumerate(CLNF_COLUMNS.items()):
            if pid == 301 and stream == "gaze":
                continue
            frames = n - 1 if (pid == 300 and stream == "gaze") else n
            written["clnf"][pid][stream] = write_frame_table(
                folder / f"{pid}_CLNF_{stream}.txt", columns, frames, seed=pid * 10 + index, failed=(5,),
                blank=(7,) if stream == "AUs" else ())
        if pid == 311:
            (folder / f"{pid}_CLNF_pose.txt").write_text("this is not a table\x00\x01")
    header = ["Participant_ID", "PHQ8_Binary", "PHQ8_Score", "Gender", *DAIC_ITEMS]
    items = {300: [2, 1, 3, 2, 1, 0, 1, 0], 301: [0, 0, 1, 1, 0, 0, 0, 0]}
    write_csv(root / "train_split_Depression_AVEC2017.csv", header, [[300, 1, 10, 1, *items[300]]])
    write_csv(root / "dev_split_Depression_AVEC2017.csv", header, [[301, 0, 2, 0, *items[301]]])
    write_csv(root / "test_split_Depression_AVEC2017.csv", ["participant_ID", "Gender"], [[310, 1], [311, 0]])
    write_csv(root / "full_test_split.csv", ["Participant_ID", "PHQ_Binary", "PHQ_Score", "Gender"],
              [[310, 1, 15, 1], [311, 0, 3, 0]])
    written["items"] = items
    return written


# --- CMDC ------------------------------------------------------------------------------------------------


def cmdc_tree(root: Path, questions: int = 3, seconds: float = 1.0) -> dict:
    """HC01 and MDD01 with ``questions`` answers each (MDD01's Q2 has no audio), labels with PHQ9_1..9,
    questions.csv, and MDD02 listed in labels without a folder."""
    durations: dict = {}
    for group, subject in (("HC", "HC01"), ("MDD", "MDD01")):
        folder = root / group / subject
        for q in range(1, questions + 1):
            length = seconds * q / 2 + 0.5  # answers of different lengths
            if not (subject == "MDD01" and q == 2):
                write_wav(folder / f"Q{q}.wav", length, freq=300 + 20 * q)
            (folder / f"Q{q}.txt").write_text(f"第{q}个回答，我最近睡得不好。\n", encoding="utf-8")
            write_frame_table(folder / f"Q{q}.csv", EDAIC_OPENFACE_COLUMNS[:10], round(length * 30) + 2,
                              seed=q)
            durations[(subject, q)] = length
    write_csv(root / "labels.csv", ["subject_id", *[f"PHQ9_{i}" for i in range(1, 10)], "PHQ9_total"],
              [["HC01", 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], ["MDD01", 3, 2, 3, 2, 1, 2, 3, 2, 1, 19],
               ["MDD02", 1, 1, 1, 1, 1, 1, 1, 1, 1, 9]])
    write_csv(root / "questions.csv", ["question", "text"], [[q, f"请谈谈第{q}个话题。"] for q in range(1, 13)])
    return {"durations": durations}
