"""E-DAIC-WOZ (``edaic:URI``): the AVEC 2019 release of the extended Distress Analysis Interview Corpus.

Layout (unpacked anywhere below URI)::

    300_P/300_AUDIO.wav                                  16 kHz interview audio (required: hashed, gives the duration)
    300_P/300_Transcript.csv                             Start_Time, End_Time, Text, Confidence (participant only)
    300_P/features/300_CNN_ResNet.mat                    variable ``feature``, N x 2048 (classic or v7.3 .mat)
    300_P/features/300_OpenFace2.1.0_Pose_gaze_AUs.csv   frame, timestamp, confidence, success + 49 features
    train_split.csv, dev_split.csv, test_split.csv       Participant_ID, Gender, PHQ_Binary, PHQ_Score, ...
    Detailed_PHQ8_Labels.csv (optional)                  Participant_ID, PHQ_8NoInterest ... PHQ_8Moving

The visual stream is ``config.corpus.visual_stream``: ``resnet`` (the released per-frame face embeddings; their
rate is not stated in the release, so it is *derived*: N frames / audio duration) or ``openface`` (49
pose/gaze/AU values at the rate of the file's timestamps, about 30 fps). A missing transcript or visual file
leaves that modality out (the model takes any subset); a file that is present but unreadable makes the
interview an error row. A participant listed in a split file without a folder is an error row too.
"""

from __future__ import annotations

import h5py
import numpy as np
import scipy.io

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.corpora.openface import read_frame_table
from mllm_dr.data.corpora.participants import discover_participants, load_audio_and_transcript
from mllm_dr.data.sources import InterviewInput, RawInterview
from mllm_dr.errors import UserError
from mllm_dr.storage import Location, resolve

SPLIT_FILES = {"train_split.csv": "train", "dev_split.csv": "dev", "test_split.csv": "test"}
DETAIL_FILE = "detailed_phq8_labels.csv"
TOTAL_COLUMNS = ("phqscore", "phq8score", "phq8total")
RESNET_KEY = "feature"


def _roles(pid: str) -> dict[str, str]:
    return {"audio": f"{pid}_audio.wav", "transcript": f"{pid}_transcript.csv",
            "resnet": f"features/{pid}_cnn_resnet.mat",
            "openface": f"features/{pid}_openface2.1.0_pose_gaze_aus.csv"}


class EdaicFormat:
    name = "edaic"

    def discover(self, root: Location, site: str, config: PreprocessConfig) -> list[InterviewInput]:
        return discover_participants(root, site, self.name, SPLIT_FILES, TOTAL_COLUMNS, _roles, DETAIL_FILE)

    def load(self, item: InterviewInput, config: PreprocessConfig) -> RawInterview:
        raw = load_audio_and_transcript(item, config)
        if config.corpus.visual_stream == "resnet" and "resnet" in item.files:
            features = read_mat_matrix(resolve(item.files["resnet"]), RESNET_KEY)
            raw.visual_features = features
            raw.visual_features_rate = features.shape[0] / raw.duration_s if raw.duration_s > 0 else 0.0
            raw.visual_features_name = "edaic-cnn-resnet"
        elif config.corpus.visual_stream == "openface" and "openface" in item.files:
            table = read_frame_table(resolve(item.files["openface"]))
            raw.visual_features, raw.visual_features_rate = table.features, table.rate
            raw.visual_features_name = "edaic-openface2.1.0-pose-gaze-aus"
        return raw


def read_mat_matrix(location: Location, key: str) -> np.ndarray:
    """A 2-D float32 matrix from a MATLAB file, classic (v5/v7, scipy) or v7.3 (HDF5, h5py).

    MATLAB stores arrays column-major; a v7.3 file is HDF5 and h5py reads it row-major, so an N x D MATLAB
    matrix comes back D x N and is transposed here. Classic files come back N x D from scipy as they are.
    """
    name = location.path.rsplit("/", 1)[-1]
    try:
        with location.local_copy() as path:
            if h5py.is_hdf5(path):
                with h5py.File(path, "r") as mat:
                    if key not in mat:
                        found = ", ".join(sorted(k for k in mat if not k.startswith("#"))) or "none"
                        raise UserError(f"{name}: no variable {key!r} (found: {found})")
                    matrix = np.asarray(mat[key][()]).T
            else:
                variables = scipy.io.loadmat(path, variable_names=[key])
                if key not in variables:
                    raise UserError(f"{name}: no variable {key!r}")
                matrix = np.asarray(variables[key])
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - scipy and h5py fail on damaged files with any kind of error
        raise UserError(f"{name}: not a readable MATLAB file ({type(exc).__name__})") from None
    if matrix.ndim != 2 or matrix.shape[0] == 0 or not np.issubdtype(matrix.dtype, np.number):
        raise UserError(f"{name}: {key!r} is not a non-empty 2-D numeric matrix (shape {matrix.shape})")
    return np.nan_to_num(matrix.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)


FORMAT = EdaicFormat()
