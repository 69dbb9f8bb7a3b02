"""Durable buffers on SQLite or PostgreSQL (SQLAlchemy Core, Alembic migrations)."""
