"""Bursts for any consumer: a closed burst POSTed, signed, to the operator's own endpoint."""
