"""The HTTP surface: the Chatwoot webhook and health endpoints."""
