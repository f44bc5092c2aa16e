"""Distributed fine-tuning: the typed run config, the DeepSpeed config, the per-worker loop, the Ray Train driver."""
