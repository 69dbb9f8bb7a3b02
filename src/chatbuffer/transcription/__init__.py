"""Adapters that turn voice notes into text."""
