"""Which code may run on which schema: expand, then contract.

A rollback of the code must not wait for a rollback of the schema. Each migration says which
code it leaves working, in a module attribute ``oldest_compatible_code``: an *expand* migration
(a new table, a nullable column, a new function) names its parent, so the release before it
still runs; a *contract* migration (a dropped column, a changed unique key the old SQL relies on)
names itself. A migration that says nothing is a contract one.

The previous release's code cannot read migrations it does not ship, so the database carries the
answer: after every upgrade or downgrade the environment writes the *floor* of the schema (the
newest ``oldest_compatible_code`` among the applied migrations) into ``schema_compatibility``.
Code whose own head is at or past the floor may run on a schema ahead of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from alembic.script import ScriptDirectory
from sqlalchemy import Connection, delete, insert, inspect, select

from chatbuffer.storage.tables import schema_compatibility


@dataclass(frozen=True, slots=True)
class Chain:
    """The migrations this code ships, oldest first, with the code each one leaves working."""

    revisions: tuple[str, ...]
    oldest_code: dict[str, str]

    @classmethod
    def of(cls, scripts: ScriptDirectory) -> Chain:
        walked = list(scripts.walk_revisions("base", "heads"))
        walked.reverse()
        revisions = tuple(script.revision for script in walked)
        oldest = {
            script.revision: str(
                getattr(script.module, "oldest_compatible_code", None) or script.revision
            )
            for script in walked
        }
        return cls(revisions, oldest)

    @property
    def head(self) -> str | None:
        return self.revisions[-1] if self.revisions else None

    def floor(self, revision: str) -> str:
        """The oldest code revision that runs on a schema at ``revision``."""
        applied = self.revisions[: self.revisions.index(revision) + 1]
        return max((self.oldest_code[r] for r in applied), key=self.revisions.index)

    def runs_on(self, floor: str) -> bool:
        """Whether this code (at its head) runs on a schema whose floor is ``floor``."""
        return floor in self.revisions


def record_floor(connection: Connection, chain: Chain, revision: str | None) -> None:
    """Write the schema's floor after a migration run, in its transaction."""
    # Below the migration that creates the table (a downgrade) there is nothing to record.
    if revision is None or not inspect(connection).has_table(schema_compatibility.name):
        return
    connection.execute(delete(schema_compatibility))
    connection.execute(
        insert(schema_compatibility).values(
            id=1, revision=revision, oldest_compatible_code=chain.floor(revision)
        )
    )


def read_floor(connection: Connection) -> str | None:
    """The floor a newer release recorded, or None where the table is missing or empty."""
    if not inspect(connection).has_table(schema_compatibility.name):
        return None
    value = connection.execute(select(schema_compatibility.c.oldest_compatible_code)).scalar()
    return None if value is None else str(value)
