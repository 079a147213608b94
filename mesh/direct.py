"""Hot statements run on the driver directly: SQLAlchemy builds and compiles them, once; its
pool lends the connection; asyncpg, or SQLite's own `sqlite3` for a file (on the event loop, or
its reader thread: `mesh.db._LoopReader`), runs them.

SQLAlchemy's execution costs more CPU than a hot statement itself: the compiled cache's lookup,
the execution context, the result's rows, and on PostgreSQL a greenlet for the call and the
DBAPI adapter around asyncpg (a `prepare()` and a fetch, each a greenlet switch). A statement
`prepared()` marks is compiled once per database (`Direct`) and runs on the pooled
connection's driver connection. Inventory's stock read took 224-306 µs of the process's CPU
through SQLAlchemy on PostgreSQL and 84-137 µs so (16 reads in flight, in process,
alternating); on a SQLite file 80-85 µs and 22-29 µs on the reader thread.

What SQLAlchemy does for these statements is done: bound values through their types' bind
processors (an aware datetime to naive UTC), result values through their result processors
(JSON decoded, text to datetime on SQLite; asyncpg's JSON codec is the one SQLAlchemy's
dialect set on the connection), NUL refused before it is sent, a failed checkout raised as
SQLAlchemy raises it. A statement the database refused changed nothing (it ran alone): it
runs again through SQLAlchemy, which raises the error as for any other statement. On
PostgreSQL a connection that failed or whose call was cancelled is dropped rather than
returned to the pool, and a write whose connection failed is not sent again
(`Database._run_direct`). With tracing on, statements go through SQLAlchemy, whose events make
their spans.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

S = TypeVar("S", bound=Executable)
_PREPARED = "invmesh_prepared"


def prepared(statement: S) -> S:
    """`statement`, marked to run on the driver directly (see the module). For statements built
    once, at import, and run often: each is compiled once per database."""
    return statement.execution_options(**{_PREPARED: True})


def is_prepared(statement: Executable) -> bool:
    return bool(statement.get_execution_options().get(_PREPARED))


class Direct:
    """A statement compiled for one dialect: its SQL with positional placeholders, the values to
    bind, in order, with their processors, and its columns' result processors."""

    __slots__ = ("_binds", "_compiled", "_processed", "_results", "_row", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if compiled.positiontup is None or compiled.post_compile_params or compiled.literal_execute_params:
            raise TypeError(f"a prepared statement takes plain bound values only: {statement}")
        self.sql = compiled.string
        self._compiled = compiled
        self._binds = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        )
        columns = list(statement.exported_columns)  # type: ignore[attr-defined]  # Select's, or RETURNING's
        self._row: Callable[..., Any] | None = None  # made from the first rows' names
        self._results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )
        self._processed = any(self._results)  # else the driver's values are the rows' as they are

    def arguments(self, parameters: Mapping[str, Any] | None) -> list[Any]:
        """The values to send, in placeholder order (the statement's own bound literals too)."""
        values = self._compiled.construct_params(parameters)
        return [values[name] if process is None else process(values[name]) for name, process in self._binds]

    def rows(self, records: Sequence[Sequence[Any]], names: Iterable[str]) -> list[Any]:
        """The driver's records as SQLAlchemy's rows: by name and by position, values as their
        types give them. `names` are those the compiled SQL gives the columns, as SQLAlchemy's."""
        if not records:
            return []
        if self._row is None:
            self._row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
        make, results = self._row, self._results
        if not self._processed:
            return [make(*record) for record in records]
        return [
            make(
                *[
                    value if process is None else process(value)
                    for process, value in zip(results, record, strict=True)
                ]
            )
            for record in records
        ]
