"""Preprocessing throughput: a bare PyAV loop vs the platform's pipeline on the same interview, then 1 vs 2 workers.

    python bench/preprocess.py [--workdir DIR] [--seconds 600] [--files 8] [--file-seconds 120] [--repeat 3]

Part 1 (one 10-minute 640x480 30 fps synthetic interview, H.264/AAC):
  (a) a bare single-process PyAV loop: decode everything, keep the frame on screen at each whole second
      (resized to 224x224 RGB) and the audio resampled to 16 kHz mono;
  (b) ``run_preprocess`` on the same file: isolated decode + sampling (load stage), log-mel + ResNet-18
      (encode stage), Parquet store.
  Reported: interview-seconds per CPU-second for (a), for (b)'s decode+sample stage, and for (b) end to end
  (every process of the local Ray cluster, Ray's own daemons included).
Part 2: ``--files`` interviews of ``--file-seconds`` through the pipeline on 1 core (1 loader + 1 encoder actor)
  and on 2 cores (2 + 2), each run in a fresh process pinned to its cores with one FFmpeg thread per decode;
  reported: wall-clock throughput and the 2-core / 1-core ratio.

Measurements alternate ``--repeat`` times and the best of each is reported (on a shared machine other work
only ever adds time). Each measurement prints one JSON line; the last line is the summary for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import av
import numpy as np
import psutil

from mllm_dr.config import AUDIO_SAMPLE_RATE, PreprocessConfig, load_config
from mllm_dr.data.synthetic import synthesize

FRAME_RATE, FRAME_SIZE = 1.0, 224
PIPELINE_SETTINGS = [f"media.frame_rate={FRAME_RATE}", f"media.frame_size={FRAME_SIZE}",
                     "encoders.audio.kind=logmel", "encoders.visual.kind=torchvision", "encoders.visual.arch=resnet18"]


def bare_loop(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: what any script would do with PyAV, in one process, with FFmpeg frame threading."""
    with av.open(path) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video.codec_context.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        chunks, frames, previous, next_time = [], [], None, 0.0
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                if packet.stream is audio:
                    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                    continue
                while next_time < frame.time - 1e-6:  # the frame on screen at next_time is the previous one
                    frames.append((frame if previous is None else previous).to_ndarray(format="rgb24", width=FRAME_SIZE,
                                                                 height=FRAME_SIZE, interpolation="AREA"))
                    next_time += 1 / FRAME_RATE
                previous = frame
        while previous is not None and next_time <= previous.time + 1e-6:
            frames.append(previous.to_ndarray(format="rgb24", width=FRAME_SIZE, height=FRAME_SIZE,
                                              interpolation="AREA"))
            next_time += 1 / FRAME_RATE
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(chunks), np.stack(frames)


class TreeCpu:
    """CPU seconds of this process and every descendant (Ray daemons, actors, decoder children), by role.

    Ray reaps its workers without adding their time to a parent, so the tree is sampled every 0.1 s and each
    process's last reading is kept: a process's final <0.1 s before it exits is missed (a slight undercount).
    """

    ROLES = (("load", ("LoadStage", "mllm_dr.data.media")), ("encode", ("EncodeStage",)))

    def __init__(self) -> None:
        self.baseline: dict[tuple[int, float], float] = {}
        self.latest: dict[tuple[int, float], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._sample()
        self.baseline = {key: cpu for key, (_, cpu) in self.latest.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_role(self) -> dict[str, float]:
        totals = {"load": 0.0, "encode": 0.0, "other": 0.0}
        for key, (role, cpu) in self.latest.items():
            totals[role] += cpu - self.baseline.get(key, 0.0)
        return {role: round(cpu, 2) for role, cpu in totals.items()}

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        """Read every process; a role sticks to a process once seen and passes to its children (decoders)."""
        roles_by_pid = {pid: role for (pid, _), (role, _) in self.latest.items()}
        for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                with process.oneshot():
                    key, times = (process.pid, process.create_time()), process.cpu_times()
                    command, parent = " ".join(process.cmdline()), process.ppid()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            role = next((name for name, marks in self.ROLES if any(m in command for m in marks)), None)
            known = self.latest.get(key, ("other", 0.0))[0]
            role = role or (known if known != "other" else roles_by_pid.get(parent, "other"))
            roles_by_pid[process.pid] = role
            self.latest[key] = (role, times.user + times.system)


def measure_bare(path: str, seconds: float) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    waveform, frames = bare_loop(path)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"what": "bare PyAV loop", "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "frames": list(frames.shape), "audio_samples": len(waveform),
            "interview_s_per_cpu_s": round(seconds / cpu, 1)}


def measure_pipeline(folder: Path, store: Path, seconds: float) -> dict:
    """One run over ``folder`` on the local Ray cluster this process started (re-runs overwrite the store)."""
    from mllm_dr.data.preprocess import run_preprocess

    config = load_config(PreprocessConfig, None, PIPELINE_SETTINGS)
    wall = time.perf_counter()
    with TreeCpu() as cpu:
        summary = run_preprocess([str(folder)], str(store), config, overwrite=True, progress=False)
    wall = time.perf_counter() - wall
    assert summary.ok == 1, summary.errors
    roles = cpu.by_role()
    total = sum(roles.values())
    return {"what": "pipeline", "wall_s": round(wall, 2), "cpu_s": round(total, 2), "cpu_s_by_process": roles,
            "decode_sample_call_cpu_s": round(summary.load_cpu_s, 2),
            "encode_call_cpu_s": round(summary.encode_cpu_s, 2),
            "interview_s_per_cpu_s": round(seconds / total, 2),
            "decode_sample_interview_s_per_cpu_s": round(seconds / summary.load_cpu_s, 1),
            "decode_sample_with_actor_startup_interview_s_per_cpu_s": round(seconds / roles["load"], 1)}


def scaling_run(cores: int, folder: str, store: str) -> dict:
    """One pipeline run pinned to ``cores`` CPUs with ``cores`` loaders and ``cores`` encoder actors."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    import ray

    from mllm_dr.data.preprocess import run_preprocess

    settings = [*PIPELINE_SETTINGS, "media.decode_threads=1", f"decode_workers={cores}", f"encoders.workers={cores}"]
    ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(2)
        wall = time.perf_counter()
        with TreeCpu() as cpu:
            summary = run_preprocess([folder], store, load_config(PreprocessConfig, None, settings), progress=False)
        wall = time.perf_counter() - wall
    finally:
        ray.shutdown()
    return {"what": f"pipeline on {cores} core(s)", "ok": summary.ok, "wall_s": round(wall, 2),
            "cpu_s": round(sum(cpu.by_role().values()), 2), "interview_s": round(summary.interview_seconds, 1),
            "interview_s_per_wall_s": round(summary.interview_seconds / wall, 2),
            "cores_obtained": round(sum(cpu.by_role().values()) / wall, 2)}  # below `cores` when others share them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/mllm-dr-bench", help="synthetic inputs and stores (kept)")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the part-1 interview")
    parser.add_argument("--files", type=int, default=8, help="interviews in the scaling run")
    parser.add_argument("--file-seconds", type=float, default=120.0, help="length of each scaling interview")
    parser.add_argument("--repeat", type=int, default=3, help="alternating repetitions; the best is reported")
    parser.add_argument("--scaling-run", type=int, help=argparse.SUPPRESS)  # internal: one pinned run
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scaling_run:
        print(json.dumps(scaling_run(args.scaling_run, args.folder, args.store)))
        return

    work = Path(args.workdir)
    single, many = work / f"one-{args.seconds:g}s", work / f"many-{args.files}x{args.file_seconds:g}s"
    if not (single / "synth-000.mp4").exists():
        synthesize(str(single), interviews=1, seed=0, seconds=args.seconds, width=640, height=480, fps=30)
    if not many.exists():
        synthesize(str(many), interviews=args.files, seed=1, seconds=args.file_seconds, width=640, height=480, fps=30)
    video = str(single / "synth-000.mp4")
    machine = {"cpus": os.cpu_count(), "load_avg_at_start": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps({"what": "machine", **machine}))

    # The machine is shared: measurements alternate and the best of --repeat is kept (noise only adds time).
    import ray

    bares, pipelines = [], []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(2)  # let the daemons settle before the first CPU baseline
        for _ in range(args.repeat):
            bares.append(measure_bare(video, args.seconds))
            print(json.dumps(bares[-1]))
            pipelines.append(measure_pipeline(single, work / "store-one", args.seconds))
            print(json.dumps(pipelines[-1]))
    finally:
        ray.shutdown()
    bare = min(bares, key=lambda r: r["cpu_s"])
    stage = min(p["decode_sample_call_cpu_s"] for p in pipelines)
    stage_processes = min(p["cpu_s_by_process"]["load"] for p in pipelines)
    end_to_end = min(pipelines, key=lambda r: r["cpu_s"])

    scaling: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for cores in (1, 2):
            store = work / f"store-many-{cores}"
            shutil.rmtree(store, ignore_errors=True)
            result = subprocess.run([sys.executable, __file__, "--scaling-run", str(cores), "--folder", str(many),
                                     "--store", str(store)], check=True, capture_output=True, text=True)
            scaling[cores].append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(json.dumps(scaling[cores][-1]))
    best = {cores: max(runs, key=lambda r: r["interview_s_per_wall_s"]) for cores, runs in scaling.items()}

    print(json.dumps({
        "what": f"summary (best of {args.repeat})", **machine,
        "load_avg_at_end": [round(x, 1) for x in os.getloadavg()],
        "bare_cpu_s": bare["cpu_s"], "bare_interview_s_per_cpu_s": bare["interview_s_per_cpu_s"],
        "decode_sample_call_cpu_s": stage, "decode_sample_interview_s_per_cpu_s": round(args.seconds / stage, 1),
        "decode_sample_call_cpu_vs_bare": round(stage / bare["cpu_s"], 3),
        "decode_sample_processes_cpu_vs_bare": round(stage_processes / bare["cpu_s"], 3),
        "pipeline_cpu_s": end_to_end["cpu_s"], "pipeline_cpu_s_by_process": end_to_end["cpu_s_by_process"],
        "pipeline_end_to_end_interview_s_per_cpu_s": end_to_end["interview_s_per_cpu_s"],
        "end_to_end_vs_bare": round(end_to_end["interview_s_per_cpu_s"] / bare["interview_s_per_cpu_s"], 3),
        "scaling_2_vs_1_cores": round(best[2]["interview_s_per_wall_s"] / best[1]["interview_s_per_wall_s"], 2),
        "cores_obtained_on_1_and_2": [best[1]["cores_obtained"], best[2]["cores_obtained"]],
    }))


if __name__ == "__main__":
    main()
