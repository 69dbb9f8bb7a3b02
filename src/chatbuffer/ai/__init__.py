"""Adapters for the reply model (any OpenAI-compatible chat completions endpoint)."""
