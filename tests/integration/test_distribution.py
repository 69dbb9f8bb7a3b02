"""Would the schema and the hot path distribute by conversation (Citus)? Read, not run.

Citus cannot be installed here, so this checks the two things a distributed table needs
(``docs/scaling.md``): every primary key, unique constraint and foreign key of a
conversation-scoped table contains the conversation key, so it can be enforced inside one shard;
and every statement reads or writes one conversation (filters by the key, joins on it), so it is
routed to one shard. The claim and the next-due queries are the allowed exceptions: they read
across conversations, but still join on the key, so each shard can answer them alone.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Table, and_, bindparam, create_engine, inspect, select, update
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    Grouping,
    Tuple,
)
from sqlalchemy.sql.selectable import CTE, Alias, CompoundSelect, Join, Select, Subquery

from chatbuffer.storage import database, retention, smart_windows
from chatbuffer.storage import statements as hot_path
from chatbuffer.storage.tables import buffer_processing_jobs as jobs
from chatbuffer.storage.tables import message_buffer, metadata

#: Replicated to every node: holds no conversation data.
REFERENCE_TABLES = {"feature_flags", "bot_controls", "schema_compatibility", "alembic_version"}
#: The distribution column of each table (the conversation key is account_id plus this).
CONVERSATION_COLUMN = {"conversations": "chatwoot_conversation_id"}

#: Statements that may read across conversations; each shard can still run them alone.
CROSS_CONVERSATION = {
    hot_path: {
        "CLAIM_CANDIDATES": "the claim: due jobs of every conversation",
        "CLAIM": "the claim in one statement (PostgreSQL)",
        "NEXT_DUE": "the next wake-up",
        "NEXT_LEASE_EXPIRY": "the next wake-up",
        "NEXT_WAKE": "the next wake-up: both instants above and the clock, in one round trip",
        "LIST_BUFFERS": "operators' listing (admin API)",
        "BUFFER_SUMMARY": "operators look a buffer up by id (admin API)",
    },
    smart_windows: {},
    retention: {
        "FINISHED_BEFORE": "purge walks old finished buffers",
        **dict.fromkeys(
            [
                "COUNT_BUFFERS",
                "COUNT_MESSAGES",
                "COUNT_JOBS",
                "COUNT_REPLIES",
                "COUNT_HISTORY",
                "COUNT_SUMMARIES",
            ],
            "purge --dry-run counts them",
        ),
        **dict.fromkeys(
            ["DELETE_OLD_HISTORY", "FORGET_OLD_SUMMARIES"],
            "purge picks old history rows and summaries of every conversation, then writes them "
            "by their full key",
        ),
    },
}


def _key_of(table: str) -> tuple[str, str]:
    return ("account_id", CONVERSATION_COLUMN.get(table, "conversation_id"))


# -- the schema -------------------------------------------------------------------------------


def schema_problems(url: str) -> list[str]:
    """Where a conversation-scoped table has a key, constraint or reference without the key."""
    engine = create_engine(database.sync_url(url))
    try:
        found = inspect(engine)
        problems: list[str] = []
        for table in sorted(set(found.get_table_names()) - REFERENCE_TABLES):
            key = _key_of(table)
            columns = {c["name"] for c in found.get_columns(table)}
            if not set(key) <= columns:
                problems.append(f"{table}: no conversation key column")
                continue
            keyed: list[tuple[str, list[str]]] = [
                ("primary key", found.get_pk_constraint(table)["constrained_columns"])
            ]
            keyed += [
                (f"unique constraint {u['name']}", u["column_names"])
                for u in found.get_unique_constraints(table)
            ]
            keyed += [
                (f"unique index {i['name']}", [c for c in i["column_names"] if c])
                for i in found.get_indexes(table)
                if i["unique"]
            ]
            problems += [
                f"{table}: {what} {columns} lacks the conversation key"
                for what, columns in keyed
                if not set(key) <= set(columns)
            ]
            for fk in found.get_foreign_keys(table):
                pairs = dict(zip(fk["constrained_columns"], fk["referred_columns"], strict=True))
                referred_key = _key_of(fk["referred_table"])
                if [pairs.get(column) for column in key] != list(referred_key):
                    problems.append(
                        f"{table}: foreign key {fk['name']} {fk['constrained_columns']} -> "
                        f"{fk['referred_table']} {fk['referred_columns']} is not within one "
                        "conversation"
                    )
        return problems
    finally:
        engine.dispose()


def test_every_key_constraint_and_reference_holds_the_conversation_key(db_url: str) -> None:
    assert schema_problems(db_url) == []


def test_the_schema_check_finds_the_tables_that_would_not_distribute(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'before.db'}"
    command.upgrade(database.alembic_config(url), "0004")
    problems = schema_problems(url)
    for table in ("message_buffer", "buffered_messages", "buffer_processing_jobs", "bot_replies"):
        assert f"{table}: primary key ['id'] lacks the conversation key" in problems
    assert any(p.startswith("conversations: foreign key") for p in problems)
    assert any("uq_bot_replies_buffer_kind" in p for p in problems)


def test_the_model_declares_what_the_migrations_build() -> None:
    sharded = [t for t in metadata.sorted_tables if t.name not in REFERENCE_TABLES]
    for table in sharded:
        key = _key_of(table.name)
        assert list(table.primary_key.columns.keys())[:2] == list(key), table.name


# -- the statements ---------------------------------------------------------------------------


def _conjuncts(clause: Any) -> Iterator[Any]:
    if clause is None:
        return
    if isinstance(clause, Grouping):
        yield from _conjuncts(clause.element)
    elif isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        for part in clause.clauses:
            yield from _conjuncts(part)
    else:
        yield clause


def _leaves(from_: Any) -> Iterator[Any]:
    if isinstance(from_, Join):
        yield from _leaves(from_.left)
        yield from _leaves(from_.right)
    else:
        yield from_


def _onclauses(from_: Any) -> Iterator[Any]:
    if isinstance(from_, Join):
        yield from _onclauses(from_.left)
        yield from _onclauses(from_.right)
        yield from _conjuncts(from_.onclause)


def _table_name(from_: Any) -> str | None:
    if isinstance(from_, Alias):
        from_ = from_.element
    if isinstance(from_, Table) and from_.name not in REFERENCE_TABLES:
        return from_.name
    return None


def _role(column: Any) -> tuple[Any, str] | None:
    """(the table, alias or derived rows a key column belongs to, ``account`` or
    ``conversation``). A derived row set (a CTE, a subquery) keeps its tables' column names."""
    if not isinstance(column, ColumnClause) or getattr(column, "table", None) is None:
        return None
    name = _table_name(column.table)
    if name is None:
        if isinstance(column.table, Table):
            return None  # a reference table
        name = "conversations" if column.name == "chatwoot_conversation_id" else "derived"
    account, conversation = _key_of(name)
    if column.name == account:
        return column.table, "account"
    if column.name == conversation:
        return column.table, "conversation"
    return None


def _unwrap(element: Any) -> Any:
    return element.element if isinstance(element, Grouping) else element


def _nested(element: Any) -> Iterator[Any]:
    """The query blocks directly under ``element`` (subqueries, EXISTS, CTEs)."""
    for child in element.get_children():
        if isinstance(child, Select | CompoundSelect | Update | Delete):
            yield child
        else:
            yield from _nested(child)


def statement_problems(name: str, statement: Any, *, cross_conversation: bool = False) -> list[str]:
    problems: list[str] = []
    _check_block(name, statement, frozenset(), cross_conversation, problems)
    return list(dict.fromkeys(problems))


def _check_block(
    name: str, block: Any, enclosing: frozenset[Any], cross: bool, problems: list[str]
) -> None:
    if isinstance(block, Insert):
        return
    if isinstance(block, CompoundSelect):
        for part in block.selects:
            _check_block(name, part, enclosing, cross, problems)
        return
    if isinstance(block, Update | Delete):
        froms: list[Any] = [block.table]
        conditions = list(_conjuncts(block.whereclause))
    else:
        froms = list(block.get_final_froms())
        if enclosing and len(froms) > 1:  # SQLAlchemy's auto-correlation rule
            froms = [f for f in froms if f not in enclosing]
        conditions = list(_conjuncts(block.whereclause))
        for from_ in froms:
            conditions += _onclauses(from_)
    refs = [leaf for f in froms for leaf in _leaves(f) if _table_name(leaf) is not None]
    # Reading across conversations may be allowed; a write always names its conversations.
    _check_refs(name, refs, conditions, cross and isinstance(block, Select), problems)
    inner = enclosing | {leaf for f in froms for leaf in _leaves(f)}
    # Row sets named only through their columns (UPDATE … FROM a CTE) are checked too.
    derived: set[Any] = {
        element.table
        for condition in conditions
        for element in visitors.iterate(condition)
        if isinstance(element, ColumnClause)
        and isinstance(getattr(element, "table", None), CTE | Subquery)
    }
    for child in [*_nested(block), *(d.element for d in derived if d not in froms)]:
        _check_block(name, child, inner, cross, problems)


def _check_refs(
    name: str, refs: list[Any], conditions: list[Any], cross: bool, problems: list[str]
) -> None:
    pinned: set[tuple[Any, str]] = set()
    links: dict[tuple[Any, Any], set[str]] = {}
    for condition in conditions:
        condition = _unwrap(condition)
        if not isinstance(condition, BinaryExpression):
            continue
        left, right = _unwrap(condition.left), _unwrap(condition.right)
        if condition.operator is operators.in_op and isinstance(left, Tuple):
            pinned |= {r for r in map(_role, left.clauses) if r is not None}
            continue
        if condition.operator is not operators.eq:
            continue
        for this, other in ((left, right), (right, left)):
            mine, theirs = _role(this), _role(other)
            if mine is None or mine[0] not in refs:
                continue
            if isinstance(other, BindParameter) or (theirs is not None and theirs[0] not in refs):
                pinned.add(mine)  # a value, or the key of an enclosing query's row
            elif theirs is not None and theirs[1] == mine[1]:
                links.setdefault((mine[0], theirs[0]), set()).add(mine[1])
    # Tables joined on both key columns are one conversation: one group.
    group = {id(r): id(r) for r in refs}

    def root(ref_id: int) -> int:
        while group[ref_id] != ref_id:
            ref_id = group[ref_id]
        return ref_id

    for (a, b), roles in links.items():
        if roles == {"account", "conversation"}:
            group[root(id(a))] = root(id(b))
    keyed = {root(id(r)) for r in refs if {(r, "account"), (r, "conversation")} <= pinned}
    loose = {root(id(r)) for r in refs} - keyed
    if len(loose) > (1 if cross else 0):
        names = sorted(_table_name(r) or "?" for r in refs if root(id(r)) in loose)
        problems.append(
            f"{name}: {', '.join(names)} not filtered by the conversation key"
            if not cross
            else f"{name}: {', '.join(names)} not joined on the conversation key"
        )


def _statements(module: ModuleType) -> Iterator[tuple[str, Any]]:
    for name, value in vars(module).items():
        if (
            name.isupper()
            and not name.startswith("_")
            and isinstance(value, Select | CompoundSelect | Update | Delete | Insert)
        ):
            yield name, value


@pytest.mark.parametrize("module", [hot_path, retention, smart_windows], ids=lambda m: m.__name__)
def test_every_statement_stays_in_one_conversation_or_joins_on_its_key(
    module: ModuleType,
) -> None:
    allowed = CROSS_CONVERSATION[module]
    statements = dict(_statements(module))
    assert set(allowed) <= set(statements), "an allowed statement was renamed or removed"
    problems = [
        problem
        for name, statement in statements.items()
        for problem in statement_problems(name, statement, cross_conversation=name in allowed)
    ]
    assert problems == []


def test_the_statement_check_finds_joins_and_filters_without_the_key() -> None:
    by_id_only = jobs.join(message_buffer, message_buffer.c.id == jobs.c.buffer_id)
    old_claim = select(jobs.c.id).select_from(by_id_only).where(jobs.c.status == "scheduled")
    assert statement_problems("claim", old_claim, cross_conversation=True) == [
        "claim: buffer_processing_jobs, message_buffer not joined on the conversation key"
    ]
    half_key = jobs.join(
        message_buffer,
        and_(
            message_buffer.c.account_id == jobs.c.account_id,
            message_buffer.c.id == jobs.c.buffer_id,
        ),
    )
    assert statement_problems(
        "half", select(jobs.c.id).select_from(half_key), cross_conversation=True
    )
    by_id = update(jobs).where(jobs.c.id == bindparam("p_id")).values(attempts=0)
    assert statement_problems("by_id", by_id) == [
        "by_id: buffer_processing_jobs not filtered by the conversation key"
    ]
    # The real claims, were they not allowed to read across conversations, are reported too.
    assert statement_problems("CLAIM_CANDIDATES", hot_path.CLAIM_CANDIDATES)
    assert statement_problems("CLAIM", hot_path.CLAIM)


# -- the worker's server-side functions (migrations 0007 and 0008) ----------------------------

#: ``FROM``, ``JOIN`` or ``UPDATE`` of a table under an alias, as the functions are written.
_TABLE_REF = re.compile(r"\b(?:FROM|JOIN|UPDATE)\s+(\w+)\s+AS\s+(\w+)", re.IGNORECASE)


def _filtered(alias: str, table: str, statement: str) -> bool:
    account, conversation = _key_of(table)
    return bool(
        re.search(rf"\b{alias}\.{account}\s*=\s*p_account_id\b", statement)
        and re.search(rf"\b{alias}\.{conversation}\s*=\s*p_conversation_id\b", statement)
    )


def _joined(a: tuple[str, str], b: tuple[str, str], statement: str) -> bool:
    """Whether two aliased tables are joined on both columns of the conversation key."""
    (alias_a, table_a), (alias_b, table_b) = a, b
    return all(
        re.search(rf"\b{alias_a}\.{ca}\s*=\s*{alias_b}\.{cb}\b", statement)
        or re.search(rf"\b{alias_b}\.{cb}\s*=\s*{alias_a}\.{ca}\b", statement)
        for ca, cb in zip(_key_of(table_a), _key_of(table_b), strict=True)
    )


def function_problems(name: str, body: str) -> list[str]:
    """Where a statement of a plpgsql function reads or writes a conversation table that is
    neither filtered by the function's conversation key (``p_account_id``,
    ``p_conversation_id``) nor joined on the key to one that is. Inserts carry the key in their
    values, as ``statement_problems`` assumes too."""
    code = re.sub(r"--[^\n]*", "", body.split("$fn$")[1])
    problems = []
    for statement in code.split(";"):
        refs = [
            (alias, table)
            for table, alias in _TABLE_REF.findall(statement)
            if table in CONVERSATION_TABLES
        ]
        keyed = {ref for ref in refs if _filtered(*ref, statement)}
        grew = True
        while grew:
            grew = False
            for ref in set(refs) - keyed:
                if any(_joined(ref, other, statement) for other in keyed):
                    keyed.add(ref)
                    grew = True
        problems += [
            f"{name}: {table} ({alias}) not filtered by the conversation key"
            for alias, table in refs
            if (alias, table) not in keyed
        ]
    return problems


CONVERSATION_TABLES = {t.name for t in metadata.sorted_tables} - REFERENCE_TABLES


@pytest.mark.parametrize(
    ("migration", "at_least"),
    [("0007_worker_functions", 5), ("0008_conversation_history", 1), ("0014_reply_parts", 3)],
)
def test_every_statement_of_the_worker_functions_stays_in_one_conversation(
    migration: str, at_least: int
) -> None:
    functions = _migration(migration).FUNCTIONS
    assert len(functions) >= at_least
    problems = [
        problem
        for signature, body in functions.items()
        for problem in function_problems(signature.split("(")[0], body)
    ]
    assert problems == []


def test_the_function_check_finds_a_statement_without_the_key() -> None:
    body = """$fn$
    UPDATE buffer_processing_jobs AS j SET status = 'failed'
     WHERE j.account_id = p_account_id AND j.id = p_job_id;
    SELECT b.id FROM message_buffer AS b
      JOIN buffer_processing_jobs AS j ON j.id = b.id
     WHERE b.account_id = p_account_id AND b.conversation_id = p_conversation_id;
    $fn$"""
    assert function_problems("f", body) == [
        "f: buffer_processing_jobs (j) not filtered by the conversation key",
        "f: buffer_processing_jobs (j) not filtered by the conversation key",
    ]


def _migration(name: str) -> ModuleType:
    path = database.MIGRATIONS / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cross_conversation_problems(name: str, body: str) -> list[str]:
    """Where a step of a function that reads across conversations (the claim, migration 0013)
    uses a conversation table without joining it on the whole conversation key to another row
    of the step: each shard can then run the step on its own rows."""
    code = re.sub(r"--[^\n]*", "", body.split("$fn$")[1])
    problems = []
    # The steps are the statement's CTEs and its final SELECT.
    for step in re.split(r"\)\s*,\s*\w+\s+AS\s*\(|\bRETURN QUERY\b", code):
        for table, alias in _TABLE_REF.findall(step):
            if table not in CONVERSATION_TABLES:
                continue
            account, conversation = _key_of(table)
            on_key = all(
                re.search(
                    rf"\b{alias}\.{column}\s*=\s*\w+\.\w+|\w+\.\w+\s*=\s*{alias}\.{column}\b", step
                )
                for column in (account, conversation)
            )
            if not on_key:
                problems.append(f"{name}: {table} ({alias}) not joined on the conversation key")
    return problems


def test_the_claim_function_joins_every_table_on_the_conversation_key() -> None:
    functions = _migration("0013_claim_function").FUNCTIONS
    problems = [
        problem
        for signature, body in functions.items()
        for problem in cross_conversation_problems(signature.split("(")[0], body)
    ]
    assert problems == []
    unkeyed = functions[next(iter(functions))].replace(
        "AND e.conversation_id = b.conversation_id", ""
    )
    assert cross_conversation_problems("f", unkeyed) == [
        "f: message_buffer (e) not joined on the conversation key",
        "f: message_buffer (e) not joined on the conversation key",
    ]
