"""``mllm-dr``: one command per stage. Arguments are parsed here; the work is done by each stage's module.

Stage modules are imported only when their command runs, so ``mllm-dr --help`` is instant. A stage entry
point takes the parsed :class:`argparse.Namespace` and returns an exit code. Bad input raises
:class:`~mllm_dr.errors.UserError`, which becomes a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from mllm_dr import __version__
from mllm_dr.errors import UserError
from mllm_dr.storage import S3_ENDPOINT_ENV

Adder = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, str, Adder]] = {}  # name -> (help, "module:function", add_arguments)


def command(name: str, help: str, target: str) -> Callable[[Adder], Adder]:
    def register(add_arguments: Adder) -> Adder:
        COMMANDS[name] = (help, target, add_arguments)
        return add_arguments

    return register


@command("demo", "end to end on synthetic data: local Ray, tiny LLM, CPU", "mllm_dr.demo:main")
def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="demo-work", help="where every step's output lands (default: demo-work)")
    p.add_argument("--interviews", type=int, default=12, help="synthetic interviews per site (default: 12)")
    p.add_argument("--epochs", type=int, help="epochs per training stage (default: the demo's recipe, 6)")


@command("synth", "write synthetic interview videos with planted PHQ item signals", "mllm_dr.data.synthetic:main")
def _synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (or s3:// prefix)")
    p.add_argument("--interviews", type=int, default=8, help="number of interviews (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each interview (default: 20)")
    p.add_argument("--site", help="site name: interview ids become SITE-000... and the site seeds its people")
    p.add_argument("--width", type=int, default=160, help="frame width in pixels (default: 160)")
    p.add_argument("--height", type=int, default=120, help="frame height in pixels (default: 120)")
    p.add_argument("--fps", type=int, default=5, help="video frames per second (default: 5)")


@command("init-tiny-llm", "build a tiny random HF causal LM + tokenizer locally", "mllm_dr.model.tiny:main")
def _tiny(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory, loadable with from_pretrained")
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama", help="model family to imitate (default: llama)")
    p.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same files (default: 0)")


@command("preprocess", "interviews from one or many sites -> Parquet feature store (Ray Data)",
         "mllm_dr.data.preprocess:main")
def _preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", default=[], metavar="[SITE=][FORMAT:]URI",
                   help="input; FORMAT is videos (default), edaic, daicwoz, cmdc or manifest. Repeat for sites.")
    p.add_argument("--out", required=True, help="feature store URI (local path or s3://bucket/prefix)")
    p.add_argument("--config", help="preprocessing config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--overwrite", action="store_true", help="re-process interviews already in the store")


@command("distill", "teacher LLM writes per-item rationales for training interviews", "mllm_dr.data.distill:main")
def _distill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="feature store URI")
    p.add_argument("--teacher", required=True, help="local HF model directory or OpenAI-compatible http(s) URL")
    p.add_argument("--out", required=True, help="rationale set URI (Parquet)")
    p.add_argument("--config", help="distillation config YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")


@command("train", "two-stage fine-tuning with Ray Train + DeepSpeed ZeRO", "mllm_dr.train.trainer:main")
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config YAML (see jobs/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")


@command("evaluate", "paper-protocol evaluation report on a split", "mllm_dr.evaluation.report:main")
def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--store", required=True, help="feature store URI")
    p.add_argument("--split", default="test", help="split(s) to evaluate, comma-separated, or all (default: test)")
    p.add_argument("--out", required=True, help="report directory (local path or s3://bucket/prefix)")
    p.add_argument("--cutoff", type=int, help="screening cut-off, total >= CUTOFF is positive "
                                              "(default: the questionnaire's, 10; the CMDC protocol uses 9)")
    p.add_argument("--modality-sets", default="all,audio+text,video+text,text",
                   help="modality sets to score, masking the others at inference (default: all four)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--no-generate", action="store_true", help="regression head only: fast, no rationales")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: the model's)")
    p.add_argument("--base-llm", help="base LLM directory, overriding the one recorded in the bundle")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


@command("score", "offline batch scoring of a whole store with Ray Data", "mllm_dr.evaluation.batch:main")
def _score(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--store", required=True, help="feature store URI")
    p.add_argument("--out", required=True, help="predictions URI (Parquet)")
    p.add_argument("--workers", type=int, default=1, help="scoring actors, each loads the model once (default: 1)")
    p.add_argument("--batch-size", type=int, default=4, help="interviews per actor call (default: 4)")
    p.add_argument("--gpus-per-worker", type=float,
                   help="GPUs per scoring actor (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--no-generate", action="store_true", help="regression head only: fast, no rationales")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: the model's)")
    p.add_argument("--base-llm", help="base LLM directory, overriding the one recorded in the bundle")


@command("serve", "host the scoring HTTP endpoint on Ray Serve", "mllm_dr.serving.app:main")
def _serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--config", help="Ray Serve config file whose application args are the serving config "
                                    "(e.g. serve/local.yaml)")
    p.add_argument("--host", help="address to listen on (default: the config's http_options.host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port, else 8000)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="accept requests without a bearer token (local use only; default: refuse to start "
                        "without tokens from MLLM_DR_API_TOKENS or auth.token_file)")


@command("submit", "submit a job spec to a Ray cluster", "mllm_dr.jobs:main")
def _submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML (see jobs/)")
    p.add_argument("--address", help="Ray dashboard address, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS); "
                                      "clusters with token auth need RAY_AUTH_MODE=token and the cluster's token "
                                      "in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
    p.add_argument("--wait", action="store_true",
                   help="follow the logs; exit 0 if the job succeeded, 1 (with its error) if not")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --wait: stop following after this long (exit 3; the job keeps running)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. runtime_env.pip=null on clusters whose image has the project")
    p.add_argument("--dry-run", action="store_true",
                   help="print the equivalent `ray job submit` command (paths resolved) instead of submitting")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm-dr", description="Explainable depression assessment from clinical interviews (MLlm-DR) on Ray.")
    parser.add_argument("--version", action="version", version=f"mllm-dr {__version__}")
    parser.add_argument("--s3-endpoint", help=f"custom S3 endpoint URL (default: ${S3_ENDPOINT_ENV})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, add_arguments) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.s3_endpoint:
        os.environ[S3_ENDPOINT_ENV] = args.s3_endpoint
    module_name, function_name = COMMANDS[args.command][1].split(":")
    try:
        entry = getattr(importlib.import_module(module_name), function_name)
        return int(entry(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
