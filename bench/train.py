"""Training throughput: the Ray Train + DeepSpeed path against a plain PyTorch loop, and MFU on a GPU.

CPU (default): the same model, store and batches through

  1. ``mllm-dr train``'s own path: Ray Data -> 1 Ray Train worker -> DeepSpeed ZeRO-2 engine (fp32, gloo), and
  2. a plain single-process loop: the same rows read with pyarrow, the same ``epoch_batches`` (same seeds, so the
     same batches in the same order), ``torch.optim.AdamW`` on the same parameter groups, the same clipping.

Both count tokens (non-padding positions) over the same wall-clock span: a whole epoch, sample building
included (the Ray path reads the training split once into the object store, the plain loop once into memory).
The plain loop runs before and after the Ray run; on a shared machine each epoch is a sample, and the best and
median epochs of each path are compared. Target: overhead <= 10%.

GPU (``--gpu``): the multitask stage (LoRA + LQ-formers + projectors + head, alpha 0.5) of a real-size Llama
built from a config with random weights (nothing downloaded), DeepSpeed ZeRO-2 bf16 on one GPU, prompts of
``--seq`` tokens, and its model FLOPs utilisation. The base weights are frozen, so a token costs
``4 N + 12 L T d`` FLOPs (forward 2N, input gradients 2N, no weight gradients; attention forward 4LTd and its
backward 8LTd; N = non-embedding LLM parameters, L layers, T sequence length, d hidden size). MFU is that rate
over the GPU's dense bf16 peak (989 TFLOP/s for H100/H200 SXM unless ``--peak-tflops`` says otherwise).
``--device cpu`` runs the same code on the CPU (gloo, fp32), e.g. ``--size tiny --seq 640`` to check it works
where there is no GPU; its MFU figure is only as meaningful as the ``--peak-tflops`` given.

    python bench/train.py                       # CPU: Ray Train + DeepSpeed vs plain PyTorch
    python bench/train.py --gpu --size 1b       # GPU: MFU of the multitask stage, seq 2048
    python bench/train.py --gpu --device cpu --size tiny --seq 640 --steps 3 --warmup 1 --peak-tflops 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from mllm_dr.data.records import InterviewRecord, read_records, write_records
from mllm_dr.data.samples import PromptBuilder, PromptConfig
from mllm_dr.data.transcripts import Turn
from mllm_dr.model.tiny import build_tiny_llm
from mllm_dr.storage import resolve
from mllm_dr.train.config import TrainConfig
from mllm_dr.train.loop import (
    RunState,
    WorkerPlan,
    build_engine,
    build_model,
    derive_seed,
    epoch_batches,
    train_epoch,
)

AUDIO_DIM, VIDEO_DIM = 80, 512
WORDS = ["sleep", "tired", "work", "friends", "family", "morning", "night", "food", "energy", "focus", "worry", "hope",
         "sad", "fine", "days", "weeks", "often", "rarely", "always", "never", "little", "much", "better", "worse",
         "home", "walk", "read", "talk", "feel", "think"]
# Real-size Llama-3.2-like configs (random weights), by name; "tiny" only checks the code path.
SIZES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}


def build_llm(out: Path, **shape) -> str:
    """A random Llama of the given shape with the tiny LLM's tokenizer (its vocabulary fits in any larger one)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    build_tiny_llm(out)
    tiny = AutoConfig.from_pretrained(out)
    shape.setdefault("vocab_size", tiny.vocab_size)
    config = AutoConfig.for_model("llama", bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id,
                                  max_position_embeddings=8192, **shape)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(out)
    return str(out)


def synthetic_records(n: int, turns: int, seed: int = 0) -> list[InterviewRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        scores = rng.integers(0, 4, size=8)
        text = [Turn(2 * t, 2 * t + 2, "participant" if t % 2 else "interviewer",
                     " ".join(rng.choice(WORDS, size=12))) for t in range(turns)]
        records.append(InterviewRecord(
            interview_id=f"b{i}", site="bench", split="train", item_scores=[int(s) for s in scores],
            transcript=text, audio=(rng.normal(size=(200, AUDIO_DIM)) + scores[0]).astype(np.float16),
            audio_rate=50.0, video=rng.normal(size=(30, VIDEO_DIM)).astype(np.float16), video_rate=1.0))
    return records


def _scorer(queries: int, layers: int, transcript_tokens: int) -> dict:
    return {"lq_former": {"num_queries": queries, "num_layers": layers, "num_heads": 8},
            "prompt": {"transcript_max_tokens": transcript_tokens}}


# ------------------------------------------------------------------------------------------------ CPU


def cpu_config(store: str, llm: str, storage: str, args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.model_validate({
        "data": {"store": store, "dev_split": "dev"},
        "model": {"base_llm": llm, "scorer": _scorer(8, 2, args.transcript_tokens)},
        "stages": [{"name": "multitask", "epochs": args.epochs, "alpha": {"kind": "constant", "start": 0.5},
                    "lr": {"llm": 1e-4, "lq_former": 1e-4, "projectors": 1e-4, "head": 1e-4}}],
        "deepspeed": {"zero_stage": 2, "precision": "fp32", "micro_batch_size": args.micro},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "run": {"name": "bench", "storage": storage, "max_failures": 0},
    })


def plain_run(plan: WorkerPlan, rows: list[dict]) -> list[float]:
    """Both epochs as a plain single-process PyTorch loop over rows already in memory; tokens/s per epoch."""
    config = plan.config
    stage, ds = config.stages[0], config.deepspeed
    model = build_model(plan)
    model.set_stage(stage.name)
    optimizer = torch.optim.AdamW(model.parameter_groups(stage.lr), betas=ds.betas, eps=ds.eps,
                                  weight_decay=ds.weight_decay)
    rates = []
    for epoch in range(stage.epochs):
        started = time.perf_counter()
        torch.manual_seed(derive_seed(config.seed, 0, epoch, 0))
        batches = epoch_batches(iter(rows), model, plan, random.Random(derive_seed(config.seed, 0, epoch)))
        tokens = 0
        for _ in range(plan.steps_per_epoch):
            batch = next(batches)
            model(batch, alpha=stage.alpha.at(epoch, stage.epochs)).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ds.gradient_clipping)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
        rates.append(tokens / (time.perf_counter() - started))
    return rates


def run_cpu(args: argparse.Namespace) -> None:
    import ray

    from mllm_dr.train.trainer import plan_run, run_training

    work = Path(tempfile.mkdtemp(prefix="mllm-dr-bench-train-"))
    llm = build_llm(work / "llm", hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                    num_key_value_heads=max(1, args.hidden // 256))
    records = synthetic_records(args.interviews, turns=40)
    dev = synthetic_records(2, turns=40, seed=1)
    for record in dev:
        record.split, record.interview_id = "dev", "d" + record.interview_id
    write_records(resolve(str(work / "store")), records + dev, "part-0")
    config = cpu_config(str(work / "store"), llm, str(work / "runs"), args)
    plan, store = plan_run(config)

    # Plain PyTorch before and after the Ray run (one thread, as the Ray worker gets with cpus_per_worker=1).
    torch.set_num_threads(1)
    rows = [r.to_row() for r in read_records(store) if r.ok and r.split == config.data.train_split]
    plain = plain_run(plan, rows)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_training(config)
    finally:
        ray.shutdown()
    plain += plain_run(plan, rows)
    states = [json.loads(p.read_text()) for p in (work / "runs" / "bench").glob("checkpoint_*/state.json")]
    history = max(states, key=lambda s: s["global_step"])["history"]
    distributed = [h["train_tokens_per_s"] for h in history]

    n_params = sum(p.numel() for p in build_model(plan).parameters())
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers ({n_params / 1e6:.1f}M parameters with "
          f"LoRA/LQ-formers/head); {plan.steps_per_epoch} steps of {config.deepspeed.micro_batch_size} item "
          f"samples per epoch; CPU, 1 torch thread")
    # A shared machine's load drifts: every epoch is a sample, the best epoch is the least disturbed one.
    print(f"{'path (tokens/s per epoch)':<52}{'best':>8}{'median':>8}  epochs")
    for name, rates in (("plain PyTorch loop, 1 process (before + after)", plain),
                        ("Ray Data + Ray Train (1 worker) + DeepSpeed ZeRO-2", distributed)):
        print(f"{name:<52}{max(rates):>8.0f}{float(np.median(rates)):>8.0f}  {' '.join(f'{r:.0f}' for r in rates)}")
    print(f"overhead (best epochs): {100 * (1 - max(distributed) / max(plain)):+.1f}%; (medians): "
          f"{100 * (1 - np.median(distributed) / np.median(plain)):+.1f}% (target <= 10%)")


# ------------------------------------------------------------------------------------------------ GPU


def run_gpu(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU (or --device cpu to check the code path)")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29512"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    if on_gpu:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if on_gpu else "gloo")
    work = Path(tempfile.mkdtemp(prefix="mllm-dr-bench-gpu-"))
    shape = SIZES[args.size]
    started = time.perf_counter()
    llm = build_llm(work / "llm", **shape)
    print(f"built a random {args.size} Llama in {time.perf_counter() - started:.0f}s")

    # Size the transcript budget so that a prompt and its answer fill --seq tokens.
    def config_with(transcript_tokens: int) -> TrainConfig:
        return TrainConfig.model_validate({
            "data": {"store": str(work)}, "model": {"base_llm": llm, "scorer": _scorer(32, 4, transcript_tokens)},
            "stages": [{"name": "multitask", "epochs": 1, "alpha": {"kind": "constant", "start": 0.5}}],
            "deepspeed": {"zero_stage": 2, "precision": "bf16" if on_gpu else "fp32", "micro_batch_size": args.micro},
            "run": {"name": "bench-gpu", "storage": str(work)}})

    dims = {"audio": AUDIO_DIM, "video": VIDEO_DIM}
    no_transcript = PromptBuilder(AutoTokenizer.from_pretrained(llm), "phq8", PromptConfig(transcript_max_tokens=0),
                                  {m: 32 for m in dims})
    overhead = max(len(s.input_ids) for s in no_transcript.item_samples(synthetic_records(1, turns=1)[0]))
    if args.seq < overhead + 64:
        raise SystemExit(f"--seq {args.seq} leaves no room for a transcript: prompts without one take {overhead}")
    plan = WorkerPlan(config_with(args.seq - overhead - 16), dims, args.steps, {}, resolve(str(work / "bundle")))
    model = build_model(plan)
    records = synthetic_records(max(2, args.micro * (args.steps + args.warmup) // 8 + 1), turns=4 * args.seq // 12)
    samples = [s for r in records for s in model.build_item_samples(r)]
    batches = [model.collate(samples[i:i + args.micro]) for i in range(0, len(samples) - args.micro + 1, args.micro)]
    tokens_per_sample = float(np.mean([b["attention_mask"].sum(1).float().mean() for b in batches]))

    engine = build_engine(model, plan.config.stages[0], plan, world=1, on_gpu=on_gpu)
    state = RunState()
    train_epoch(engine, iter(batches[:args.warmup]), args.warmup, 1, 0.5, state, plan, 0)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    metrics, _ = train_epoch(engine, iter(batches[args.warmup:]), args.steps, 1, 0.5, state, plan, 0)

    text = model.causal_lm.config
    n = sum(p.numel() for name, p in model.causal_lm.named_parameters()
            if "embed_tokens" not in name and "lm_head" not in name and "lora_" not in name)
    flops_per_token = 4 * n + 12 * text.num_hidden_layers * tokens_per_sample * text.hidden_size
    achieved = metrics["train_tokens_per_s"] * flops_per_token
    peak = args.peak_tflops * 1e12
    device = torch.cuda.get_device_name(0) if on_gpu else "CPU (code-path check)"
    print(f"device: {device}; model {args.size}: {n / 1e6:,.1f}M non-embedding parameters, "
          f"{text.num_hidden_layers} layers, hidden {text.hidden_size}")
    print(f"multitask stage, ZeRO-2 {plan.config.deepspeed.precision}, micro-batch {args.micro}, "
          f"{tokens_per_sample:.0f} tokens per sample, {args.steps} timed steps")
    print(f"tokens/s {metrics['train_tokens_per_s']:.0f}; {flops_per_token / 1e9:.3g} GFLOP/token; "
          f"achieved {achieved / 1e12:.3g} TFLOP/s; MFU {100 * achieved / peak:.1f}% of {args.peak_tflops:g} "
          f"TFLOP/s (target >= 40%)")
    if on_gpu:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="MFU of the multitask stage on a real-size config")
    parser.add_argument("--size", choices=sorted(SIZES), default="1b", help="GPU model size (default: 1b)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="--gpu on the CPU checks the code path (default: cuda)")
    parser.add_argument("--seq", type=int, default=2048, help="GPU: tokens per sample (default: 2048)")
    parser.add_argument("--micro", type=int, default=None, help="micro-batch (default: 4 CPU, 8 GPU)")
    parser.add_argument("--steps", type=int, default=20, help="GPU: timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="GPU: untimed steps first (default: 3)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (default: H100 SXM)")
    parser.add_argument("--hidden", type=int, default=256, help="CPU: LLM hidden size (default: 256)")
    parser.add_argument("--layers", type=int, default=4, help="CPU: LLM layers (default: 4)")
    parser.add_argument("--interviews", type=int, default=6, help="CPU: training interviews (default: 6)")
    parser.add_argument("--epochs", type=int, default=4, help="CPU: epochs per path and run (default: 4)")
    parser.add_argument("--transcript-tokens", type=int, default=256, help="CPU: transcript budget (default: 256)")
    args = parser.parse_args()
    args.micro = args.micro or (8 if args.gpu else 4)
    run_gpu(args) if args.gpu else run_cpu(args)


if __name__ == "__main__":
    main()
