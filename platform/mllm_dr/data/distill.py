"""Rationale distillation: a teacher LLM explains each known item score of each training interview.

The paper trains the student to answer ``Score: k / Rationale: ...``; the rationales come from a stronger
LLM that is shown the transcript *and the clinician's score* and asked to justify it. This module runs that
teacher over every (interview, item) pair of the chosen splits with Ray Data and keeps only rationales that
agree with the label:

- teacher = a local Hugging Face model directory, run in an actor pool (one GPU per actor when the cluster has
  GPUs), or an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI, a hosted API) called with
  bounded retries, exponential back-off and a request-rate limit shared by the pool;
- the teacher's answer is parsed with the student's own parser (:func:`mllm_dr.data.samples.parse_score`,
  :func:`~mllm_dr.data.samples.parse_rationale`); answers that are empty, malformed (no score, no
  ``Rationale:`` part) or contradict the label are rejected and counted, calls that still fail after the retries
  are counted as failed; neither is written, so a re-run asks again;
- accepted rows are written as Parquet part files under ``--out`` (columns ``interview_id, site, item, score,
  rationale, teacher``; ``item`` is 1-based) as they arrive, and pairs already there are skipped: an interrupted
  run resumes where it stopped. ``summary.json`` beside them counts the last run.

The teacher prompt lives here (the student's prompts are in :mod:`mllm_dr.data.samples`, whose transcript
formatting and item wording it reuses): it differs from the student's in that it states the score.
API keys are read on the workers from the environment variable named by ``http.api_key_env``; they never
appear in configs, logs or outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from mllm_dr.config import StrictModel, load_config
from mllm_dr.data.records import InterviewRecord, read_records
from mllm_dr.data.samples import (
    ChatFrame,
    PromptBuilder,
    PromptConfig,
    format_answer,
    parse_rationale,
    parse_score,
)
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import ANCHORS, Questionnaire, get_questionnaire
from mllm_dr.ray_runtime import ray_session
from mllm_dr.storage import Location, resolve

RATIONALE_SCHEMA = pa.schema([("interview_id", pa.string()), ("site", pa.string()), ("item", pa.int8()),
                              ("score", pa.int8()), ("rationale", pa.string()), ("teacher", pa.string())])
SUMMARY = "_summary.json"  # "_" prefix: Parquet readers skip it
REJECT_REASONS = ("empty", "malformed", "contradicts_label")
_TRANSCRIPT_COLUMNS = ("interview_id", "site", "split", "language", "questionnaire", "item_scores", "transcript",
                       "status")


class HttpTeacherConfig(StrictModel):
    model: str = Field("teacher", description="model name sent in each request (e.g. the vLLM served model)")
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the API key (read on the workers)")
    timeout_s: float = Field(120, gt=0, description="per-request timeout")
    max_retries: int = Field(4, ge=0, description="retries of a request after 429, 5xx or a network error")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    max_backoff_s: float = Field(30.0, ge=0, description="longest retry delay (also caps Retry-After)")
    requests_per_second: float = Field(4.0, gt=0, description="request-rate limit of the whole actor pool")
    transcript_max_words: int = Field(
        6000, ge=0, description="transcript budget in words (CJK characters count one each): no tokenizer here")


class LocalTeacherConfig(StrictModel):
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor (a model larger than one GPU is spread over them); default 1 when "
                                "the cluster has GPUs, else 0")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    batch_size: int = Field(8, ge=1, description="prompts per generate call")
    transcript_max_tokens: int = Field(3000, ge=0, description="transcript budget in teacher tokens")


class DistillConfig(StrictModel):
    splits: list[str] = Field(["train"], min_length=1, description="splits whose interviews get rationales")
    questionnaire: Literal["phq8", "phq9"] | None = Field(
        None, description="items to explain; default: each interview's own questionnaire")
    include_interviewer: bool = Field(True, description="show the interviewer's turns to the teacher")
    workers: int = Field(1, ge=1, description="teacher actors (local models) or concurrent clients (HTTP)")
    max_new_tokens: int = Field(160, gt=0, description="longest teacher answer")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    flush_every: int = Field(256, ge=1, description="accepted rows per Parquet part file (resume granularity)")
    http: HttpTeacherConfig = Field(default_factory=HttpTeacherConfig, description="OpenAI-compatible teachers")
    local: LocalTeacherConfig = Field(default_factory=LocalTeacherConfig, description="local model teachers")


# ---------------------------------------------------------------- the teacher prompt

_TEACHER_TEXTS = {
    "en": {
        "system": "You are an experienced clinical psychologist. You explain depression-questionnaire ratings "
                  "made from recorded clinical interviews, citing what the participant said.",
        "transcript": "Transcript of the interview:",
        "no_transcript": "(no transcript)",
        "task": ("The clinician rated this item {score} ({anchor}). Write a short clinical rationale, one or two "
                 "sentences, that explains this rating with evidence from the interview. Do not change the "
                 "rating. Answer in exactly this form:\n{form}"),
        "placeholder": "<your rationale>",
    },
    "zh": {
        "system": "你是一名经验丰富的临床心理医生，负责根据临床访谈录像解释抑郁问卷的评分，并引用受访者所说的话作为依据。",
        "transcript": "访谈记录：",
        "no_transcript": "（无访谈记录）",
        "task": "临床医生对该条目的评分为{score}（{anchor}）。请用一到两句话写出简短的临床评估理由，用访谈中的证据解释这一评分，"
                "不要更改评分。请严格按以下格式回答：\n{form}",
        "placeholder": "<评估理由>",
    },
}


@dataclass(frozen=True)
class TeacherRequest:
    interview_id: str
    site: str
    item: int  # 1-based
    score: int
    language: str
    system: str
    user: str


class TeacherPrompts:
    """Teacher messages for the items of an interview, with the student's transcript selection and item wording."""

    def __init__(self, tokenizer: Any, transcript_max_tokens: int, include_interviewer: bool) -> None:
        self.tokenizer = tokenizer
        self.prompt_config = PromptConfig(transcript_max_tokens=transcript_max_tokens,
                                          include_interviewer=include_interviewer)
        self._builders: dict[str, PromptBuilder] = {}

    def builder(self, questionnaire: Questionnaire) -> PromptBuilder:
        if questionnaire.id not in self._builders:
            self._builders[questionnaire.id] = PromptBuilder(self.tokenizer, questionnaire, self.prompt_config)
        return self._builders[questionnaire.id]

    def requests(self, record: InterviewRecord, questionnaire: Questionnaire) -> list[TeacherRequest]:
        """One request per labelled item of ``questionnaire`` (items the record's labels lack are skipped)."""
        builder = self.builder(questionnaire)
        language = builder.language(record)
        texts = _TEACHER_TEXTS[language]
        lines = builder.transcript_lines(record.transcript, language) or [texts["no_transcript"]]
        transcript = "\n".join([texts["transcript"], *lines])
        own = get_questionnaire(record.questionnaire)
        labels = {item.key: int(s) for item, s in zip(own.items, record.item_scores or [])}
        out = []
        for index, item in enumerate(questionnaire.items):
            score = labels.get(item.key)
            if score is None:
                continue
            task = texts["task"].format(score=score, anchor=ANCHORS[language][score],
                                        form=format_answer(score, texts["placeholder"], language))
            user = f"{transcript}\n\n{builder.item_instruction(index, language)}\n\n{task}"
            out.append(TeacherRequest(record.interview_id, record.site, index + 1, score, language,
                                      texts["system"], user))
        return out


def word_tokenizer() -> Any:
    """A real (if crude) tokenizer that counts words, punctuation and CJK characters, for HTTP teachers whose
    tokenizer is not available here: it lets the student's transcript selection budget the transcript."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


# ---------------------------------------------------------------- judging answers


def judge(answer: str, score: int, language: str) -> tuple[str, str | None]:
    """``("accepted", rationale)`` or ``(reason, None)`` with reason in :data:`REJECT_REASONS`."""
    text = unicodedata.normalize("NFKC", answer or "").strip()
    if not text:
        return "empty", None
    stated = parse_score(text, language)
    rationale = parse_rationale(text, language)
    if stated is None or not rationale or rationale == text:  # rationale == text: no "Rationale:" marker
        return "malformed", None
    if stated != score:
        return "contradicts_label", None
    return "accepted", rationale


# ---------------------------------------------------------------- teachers (Ray Data callables)


def _batch_requests(batch: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [{k: batch[k][i] for k in keys} for i in range(len(batch[keys[0]]))]


def _results(rows: list[dict[str, Any]], answers: list[str | None], teacher: str) -> dict[str, list[Any]]:
    """Judged rows; ``answer is None`` means the call failed."""
    out: dict[str, list[Any]] = {k: [] for k in ("interview_id", "site", "item", "score", "rationale", "teacher",
                                                  "outcome")}
    for row, answer in zip(rows, answers):
        outcome, rationale = ("failed", None) if answer is None else judge(answer, int(row["score"]),
                                                                            str(row["language"]))
        for key in ("interview_id", "site"):
            out[key].append(str(row[key]))
        out["item"].append(int(row["item"]))
        out["score"].append(int(row["score"]))
        out["rationale"].append(rationale or "")
        out["teacher"].append(teacher)
        out["outcome"].append(outcome)
    return out


class LocalTeacher:
    """A Hugging Face causal LM answering batches of teacher prompts (one per actor of the pool)."""

    def __init__(self, model_dir: str, config_json: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = DistillConfig.model_validate_json(config_json)
        self.config = config
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "auto": torch.bfloat16 if self.device == "cuda" else torch.float32}[config.local.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        spread = torch.cuda.device_count() > 1  # a teacher too large for one GPU spans the actor's GPUs
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True,
                                                          **({"device_map": "auto"} if spread else {}))
        if not spread:
            self.model.to(self.device)
        self.model.eval()
        self.teacher = teacher_id(model_dir, config)
        self._frames: dict[str, ChatFrame] = {}

    def prompt(self, row: dict[str, Any]) -> str:
        system = str(row["system"])
        if system not in self._frames:
            self._frames[system] = ChatFrame.from_tokenizer(self.tokenizer, system)
        frame = self._frames[system]
        return frame.before_user + str(row["user"]) + frame.after_user

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        import torch

        rows = _batch_requests(batch)
        encoded = self.tokenizer([self.prompt(r) for r in rows], return_tensors="pt", padding=True,
                                 add_special_tokens=False, return_token_type_ids=False).to(self.device)
        sampling = {"do_sample": True, "temperature": self.config.temperature} if self.config.temperature > 0 \
            else {"do_sample": False}
        with torch.inference_mode():
            output = self.model.generate(**encoded, max_new_tokens=self.config.max_new_tokens,
                                         pad_token_id=self.tokenizer.pad_token_id, **sampling)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        answers = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return _results(rows, answers, self.teacher)


class RateLimiter:
    """At most ``rate`` calls per second from this process (evenly spaced), thread-safe."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        time.sleep(max(0.0, slot - now))


class HttpTeacher:
    """An OpenAI-compatible chat-completions client with bounded retries and a rate limit (one per actor)."""

    RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(self, base_url: str, config_json: str) -> None:
        config = DistillConfig.model_validate_json(config_json)
        self.config, self.http = config, config.http
        self.url = chat_completions_url(base_url)
        self.teacher = teacher_id(base_url, config)
        self.limiter = RateLimiter(self.http.requests_per_second / config.workers)
        self.api_key = None
        if self.http.api_key_env:
            self.api_key = os.environ.get(self.http.api_key_env)
            if not self.api_key:
                raise UserError(f"environment variable {self.http.api_key_env} (http.api_key_env) is not set "
                                "on this worker")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = _batch_requests(batch)
        return _results(rows, [self.ask(r) for r in rows], self.teacher)

    def ask(self, row: dict[str, Any]) -> str | None:
        """The answer text, or ``None`` when every attempt failed."""
        body = json.dumps({
            "model": self.http.model, "max_tokens": self.config.max_new_tokens,
            "temperature": self.config.temperature,
            "messages": [{"role": "system", "content": str(row["system"])},
                         {"role": "user", "content": str(row["user"])}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.http.max_retries + 1):
            self.limiter.wait()
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.http.timeout_s) as response:
                    return _answer_text(json.loads(response.read()))
            except urllib.error.HTTPError as exc:
                if exc.code not in self.RETRY_STATUS:
                    return None
                retry_after = _seconds(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError):
                pass
            if attempt < self.http.max_retries:
                delay = retry_after if retry_after is not None else self.http.backoff_s * 2 ** attempt
                time.sleep(min(delay, self.http.max_backoff_s))
        return None


def _answer_text(response: Any) -> str:
    """The first choice's message content; a response of another shape counts as an empty answer."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def is_http_teacher(teacher: str) -> bool:
    return teacher.startswith(("http://", "https://"))


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``.../v1`` or ``.../v1/chat/completions`` -> the chat-completions endpoint."""
    base = base_url.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        base = base.removesuffix(suffix)
    return f"{base}/v1/chat/completions"


def teacher_id(teacher: str, config: DistillConfig) -> str:
    """What the ``teacher`` column records: the model directory, or the endpoint (no credentials) and model."""
    if not is_http_teacher(teacher):
        return os.path.abspath(teacher)
    parts = urllib.parse.urlsplit(chat_completions_url(teacher))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}#{config.http.model}"


# ---------------------------------------------------------------- the run


@dataclass
class DistillSummary:
    pairs: int  # labelled (interview, item) pairs of the chosen splits
    already_done: int  # skipped: accepted in an earlier run
    asked: int
    accepted: int
    rejected: dict[str, int]  # reason -> count
    failed: int  # teacher calls that failed after the retries
    seconds: float

    def line(self) -> str:
        rejected = ", ".join(f"{k} {v}" for k, v in self.rejected.items())
        return (f"{self.pairs} pairs: {self.already_done} already done, {self.asked} asked -> {self.accepted} "
                f"accepted, {sum(self.rejected.values())} rejected ({rejected}), {self.failed} failed "
                f"in {self.seconds:.1f}s")


def read_rationales(location: Location) -> pa.Table:
    """Every accepted rationale of a rationale set (an empty table when there is none yet)."""
    if not location.exists():
        return RATIONALE_SCHEMA.empty_table()
    parts = [f for f in location.list_files() if f.path.endswith(".parquet")]
    tables = [pq.read_table(f.path, filesystem=location.fs, schema=RATIONALE_SCHEMA) for f in parts]
    return pa.concat_tables(tables) if tables else RATIONALE_SCHEMA.empty_table()


def rationale_lookup(location: Location) -> dict[tuple[str, str], dict[int, str]]:
    """``(site, interview_id) -> {item number: rationale}``: what ``build_item_samples`` takes per interview."""
    lookup: dict[tuple[str, str], dict[int, str]] = {}
    for row in read_rationales(location).to_pylist():
        lookup.setdefault((row["site"], row["interview_id"]), {})[int(row["item"])] = row["rationale"]
    return lookup


def run_distill(store_uri: str, teacher: str, out_uri: str, config: DistillConfig) -> DistillSummary:
    """Ask ``teacher`` for every labelled pair of ``config.splits`` not yet in ``out_uri``; write what passes."""
    import ray

    started = time.monotonic()
    store, out = resolve(store_uri), resolve(out_uri)
    http = is_http_teacher(teacher)
    if not http and not os.path.isfile(os.path.join(teacher, "config.json")):
        raise UserError(f"teacher {teacher} is neither an http(s) URL nor a local Hugging Face model directory")
    if http and config.http.api_key_env and not os.environ.get(config.http.api_key_env):
        raise UserError(f"environment variable {config.http.api_key_env} (http.api_key_env) is not set")

    records = [r for r in read_records(store, columns=_TRANSCRIPT_COLUMNS)
               if r.ok and r.split in config.splits and r.item_scores is not None]
    prompts = _teacher_prompts(teacher, config)
    requests = [request for record in records for request in prompts.requests(
        record, get_questionnaire(config.questionnaire or record.questionnaire))]
    done = {(row["site"], row["interview_id"], int(row["item"]))
            for row in read_rationales(out).select(["site", "interview_id", "item"]).to_pylist()}
    todo = [r for r in requests if (r.site, r.interview_id, r.item) not in done]

    counts: Counter[str] = Counter()
    if todo:
        with ray_session():
            dataset = ray.data.from_items([dataclasses.asdict(r) for r in todo])
            if http:
                answers = dataset.map_batches(
                    HttpTeacher, fn_constructor_args=(teacher, config.model_dump_json()), batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=config.workers), num_cpus=0.25)
            else:
                gpus = config.local.num_gpus
                if gpus is None:
                    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
                answers = dataset.map_batches(
                    LocalTeacher, fn_constructor_args=(teacher, config.model_dump_json()),
                    batch_size=config.local.batch_size, compute=ray.data.ActorPoolStrategy(size=config.workers),
                    num_gpus=gpus, num_cpus=1)
            _write_accepted(answers, out, config.flush_every, counts)

    summary = DistillSummary(
        pairs=len(requests), already_done=len(requests) - len(todo), asked=len(todo), accepted=counts["accepted"],
        rejected={reason: counts[reason] for reason in REJECT_REASONS}, failed=counts["failed"],
        seconds=time.monotonic() - started)
    out.join(SUMMARY).write_text(json.dumps({**summary.__dict__, "teacher": teacher_id(teacher, config),
                                             "splits": config.splits}, indent=2) + "\n")
    return summary


def _teacher_prompts(teacher: str, config: DistillConfig) -> TeacherPrompts:
    if is_http_teacher(teacher):
        return TeacherPrompts(word_tokenizer(), config.http.transcript_max_words, config.include_interviewer)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher, local_files_only=True)
    return TeacherPrompts(tokenizer, config.local.transcript_max_tokens, config.include_interviewer)


def _write_accepted(answers: Any, out: Location, flush_every: int, counts: Counter[str]) -> None:
    """Stream the judged rows, writing accepted ones in parts of ``flush_every`` as they come."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    pending: list[dict[str, Any]] = []
    parts = 0

    def flush() -> None:
        nonlocal parts, pending
        if pending:
            with out.join(f"part-{run_id}-{parts:05d}.parquet").open("wb") as f:
                pq.write_table(pa.Table.from_pylist(pending, schema=RATIONALE_SCHEMA), f)
            parts, pending = parts + 1, []

    for row in answers.iter_rows():
        outcome = str(row["outcome"])
        counts[outcome] += 1
        if outcome == "accepted":
            pending.append({name: row[name] for name in RATIONALE_SCHEMA.names})
            if len(pending) >= flush_every:
                flush()
    flush()


def main(args: argparse.Namespace) -> int:
    config = load_config(DistillConfig, args.config, args.set)
    summary = run_distill(args.store, args.teacher, args.out, config)
    print(summary.line())
    return 0
