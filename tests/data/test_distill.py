"""Rationale distillation against real teachers: a real HTTP server on 127.0.0.1 speaking the OpenAI chat API,
and a tiny local Hugging Face model in a Ray Data actor pool. Counts of accepted and rejected answers are exact."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
import torch

from mllm_dr.data.distill import (
    DistillConfig,
    TeacherPrompts,
    judge,
    read_rationales,
    run_distill,
)
from mllm_dr.data.records import InterviewRecord, write_records
from mllm_dr.data.samples import ChatFrame
from mllm_dr.data.transcripts import Turn
from mllm_dr.questionnaires import PHQ8
from mllm_dr.storage import resolve

# Ray workers inherit the environment of the Ray started later by the `ray_local` fixture (collection, which
# imports this module, always comes first): this is how a cluster's nodes would carry the teacher's API key.
KEY_ENV = "MLLM_DR_TEST_TEACHER_KEY"
SECRET = "sk-test-0123456789abcdef"
os.environ[KEY_ENV] = SECRET

TRAIN_SCORES = {"p1": [0, 1, 2, 3, 0, 1, 2, 3], "p2": [1, 1, 0, 2, 3, 1, 0, 0], "p3": [3, 2, 1, 0, 1, 1, 2, 1]}


def write_store(root) -> str:
    """Three labelled training interviews, one dev interview and one error row (only the first three count)."""
    records = [
        InterviewRecord(interview_id=pid, site="clinic", split="train", item_scores=scores,
                        transcript=[Turn(0, 2, "interviewer", "How have you been lately?"),
                                    Turn(2, 6, "participant", f"Interview {pid}: I am tired and I sleep badly.")])
        for pid, scores in TRAIN_SCORES.items()]
    records.append(InterviewRecord(interview_id="d1", site="clinic", split="dev", item_scores=[1] * 8,
                                   transcript=[Turn(0, 1, "participant", "Fine.")]))
    records.append(InterviewRecord.failed("broken", "could not decode", split="train"))
    store = resolve(str(root / "store"))
    write_records(store, records, "part-0")
    return store.uri


class FakeTeacher(BaseHTTPRequestHandler):
    """Answers by item number: 1-3 good, 4 contradicts the label, 5 malformed, 6 empty, 7 rate-limited once then
    good, 8 a server error every time. Requests without the right bearer token get 401."""

    log: ClassVar[list[tuple[float, int]]] = []  # (arrival time, item) of every request
    seen_item7: ClassVar[set[str]] = set()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {SECRET}" or self.path != "/v1/chat/completions":
            return self._send(401, {"error": "unauthorized"})
        user = body["messages"][-1]["content"]
        item = int(re.search(r"Item (\d) of the PHQ-8", user).group(1))
        score = int(re.search(r"rated this item (\d)", user).group(1))
        type(self).log.append((time.monotonic(), item))
        good = f"Score: {score}\nRationale: The participant describes this (item {item})."
        if item == 7 and user not in self.seen_item7:
            self.seen_item7.add(user)
            return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
        if item == 8:
            return self._send(503, {"error": "overloaded"})
        content = {4: f"Score: {(score + 1) % 4}\nRationale: A different rating.", 5: "I would rather not say.",
                   6: ""}.get(item, good)
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def teacher_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTeacher)
    FakeTeacher.log, FakeTeacher.seen_item7 = [], set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_judge_accepts_only_well_formed_answers_that_agree_with_the_label():
    assert judge("Score: 2\nRationale: Sleeps badly most nights.", 2, "en") == ("accepted",
                                                                             "Sleeps badly most nights.")
    assert judge("Score: 1\nRationale: Sleeps badly.", 2, "en")[0] == "contradicts_label"
    assert judge("Score: 2 because sleep is bad.", 2, "en")[0] == "malformed"  # no rationale part
    assert judge("Rationale: no score given.", 2, "en")[0] == "malformed"
    assert judge("  \n", 2, "en")[0] == "empty"
    assert judge("评估结果：3。评估理由：几乎每天都睡不好。", 3, "zh") == ("accepted", "几乎每天都睡不好。")


def test_http_teacher_counts_retries_rate_limit_and_resume(ray_local, tmp_path, teacher_server, capsys):
    store = write_store(tmp_path)
    out = str(tmp_path / "rationales")
    config = DistillConfig(workers=1, http={"model": "big-teacher", "api_key_env": KEY_ENV, "max_retries": 2,
                                            "backoff_s": 0.01, "requests_per_second": 20})
    first = run_distill(store, teacher_server, out, config)

    # 3 interviews x 8 items; per interview items 1, 2, 3 and 7 (after a 429) are accepted.
    assert (first.pairs, first.already_done, first.asked) == (24, 0, 24)
    assert first.accepted == 12 and first.failed == 3
    assert first.rejected == {"empty": 3, "malformed": 3, "contradicts_label": 3}
    table = read_rationales(resolve(out))
    rows = sorted(table.to_pylist(), key=lambda r: (r["interview_id"], r["item"]))
    assert table.column_names == ["interview_id", "site", "item", "score", "rationale", "teacher"]
    assert [(r["interview_id"], r["item"]) for r in rows] == [(p, i) for p in TRAIN_SCORES for i in (1, 2, 3, 7)]
    assert all(r["score"] == TRAIN_SCORES[r["interview_id"]][r["item"] - 1] for r in rows)
    assert rows[0]["rationale"] == "The participant describes this (item 1)."
    assert rows[0]["teacher"] == f"{teacher_server.removesuffix('/v1')}/v1/chat/completions#big-teacher"
    # 24 first attempts, 3 retries after 429, 2 retries for each of the 3 item-8 calls, at most 20 per second
    # (arrival times jitter by a few ms, so the rate is checked over the whole run).
    times = sorted(t for t, _ in FakeTeacher.log)
    assert len(times) == 24 + 3 + 6
    assert times[-1] - times[0] >= 0.95 * (len(times) - 1) / 20

    # A second run asks only for what is missing; the teacher still refuses the same items.
    FakeTeacher.log.clear()
    second = run_distill(store, teacher_server, out, config)
    assert (second.pairs, second.already_done, second.asked, second.accepted, second.failed) == (24, 12, 12, 0, 3)
    assert len(read_rationales(resolve(out))) == 12
    assert sorted({item for _, item in FakeTeacher.log}) == [4, 5, 6, 8]

    # The key is never written or printed.
    written = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "rationales").iterdir())
    captured = capsys.readouterr()
    assert SECRET not in written + captured.out + captured.err
    assert json.loads((tmp_path / "rationales" / "_summary.json").read_text())["accepted"] == 0


@pytest.fixture(scope="module")
def score_one_teacher(tiny_llm, tmp_path_factory):
    """The tiny LLM taught to answer "Score: 1 / Rationale: ..." to every teacher prompt of the test store."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("teacher")
    store = write_store(root)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm)
    prompts = TeacherPrompts(tokenizer, 3000, include_interviewer=True)
    requests = [r for record in _train_records(store) for r in prompts.requests(record, PHQ8)]
    frame = ChatFrame.from_tokenizer(tokenizer, requests[0].system)
    answer = tokenizer("Score: 1\nRationale: It happened on several days." + frame.after_answer,
                       add_special_tokens=False)["input_ids"]
    # A few prompts suffice: the answer follows the same assistant header in every prompt.
    prompts = [tokenizer(frame.before_user + r.user + frame.after_user, add_special_tokens=False)["input_ids"]
               for r in requests[::6]]
    length = max(map(len, prompts)) + len(answer)
    ids = torch.full((len(prompts), length), tokenizer.eos_token_id)
    labels = torch.full((len(prompts), length), -100)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        labels[row, len(prompt): len(prompt) + len(answer)] = torch.tensor(answer)
        mask[row, : len(prompt) + len(answer)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CI cores: one thread is faster than two contended ones
    try:
        for _ in range(80):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return str(root / "teacher"), store


def _train_records(store_uri: str) -> list[InterviewRecord]:
    from mllm_dr.data.records import read_records

    return [r for r in read_records(resolve(store_uri)) if r.ok and r.split == "train"]


def test_local_teacher_in_an_actor_pool(ray_local, tmp_path, score_one_teacher):
    teacher, store = score_one_teacher
    out = str(tmp_path / "rationales")
    summary = run_distill(store, teacher, out, DistillConfig(workers=1, max_new_tokens=24,
                                                             local={"batch_size": 8}))
    ones = sum(score == 1 for scores in TRAIN_SCORES.values() for score in scores)
    assert (summary.pairs, summary.accepted, summary.failed) == (24, ones, 0)
    assert summary.rejected == {"empty": 0, "malformed": 0, "contradicts_label": 24 - ones}
    table = pq.read_table(str(tmp_path / "rationales"))
    assert set(table.column("score").to_pylist()) == {1}
    assert set(table.column("rationale").to_pylist()) == {"It happened on several days."}
    assert set(table.column("teacher").to_pylist()) == {os.path.abspath(teacher)}


def test_cli_rejects_a_teacher_that_is_neither_url_nor_model(cli, tmp_path):
    store = write_store(tmp_path)
    result = cli("distill", "--store", store, "--teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "neither an http(s) URL" in result.stderr
