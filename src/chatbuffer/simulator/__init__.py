"""Test doubles that speak the wire protocols of Chatwoot and of an OpenAI-compatible model."""
