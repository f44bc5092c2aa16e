"""Serving: the assessment HTTP API on Ray Serve (ingress, preprocessor, batching scorer) and its page."""
