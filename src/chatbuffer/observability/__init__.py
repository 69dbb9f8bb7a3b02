"""Logs and the event stream that the demo timeline and operators read."""
