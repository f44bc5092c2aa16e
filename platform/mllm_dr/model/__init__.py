"""Model layer: LQ-formers, the multimodal LLM scorer, the model bundle, and a tiny LLM for tests and the demo."""
