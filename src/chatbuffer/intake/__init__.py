"""From a Chatwoot webhook to a stored message: verify, parse, classify, store."""
