"""The pure centre: buffer rules, aggregation and decisions. No I/O, no clock reads."""
