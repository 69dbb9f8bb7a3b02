"""Adapter for Chatwoot's application API (the calls an agent bot may make)."""
