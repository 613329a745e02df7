"""The store room: where runs are kept, one SQLite database per run root (``<root>/trackside.db``)
or a PostgreSQL database, with the files (media, tables, artifacts) under the root.

- ``schema``: the tables, their versions and migrations (the layout every reader relies on);
- ``dialect``: the few places SQLite and PostgreSQL differ;
- ``writer``: ``Store``, the one writer (the daemon's, a team server's);
- ``reader``: read-only connections for ``trackside.Api``, the CLI and the server;
- ``index``: the checks of artifact versions and the walk of the files a value references.

The daemon writes through this room; the SDK, the CLI and the server read through it. It
imports only the contracts.
"""

from .dialect import StoreError
from .index import check_artifact, check_manifest_entry, media_refs
from .reader import open_reader, open_readonly
from .schema import DB_NAME, SCHEMA_VERSION, STATES, SchemaVersionError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .writer import Store


def __getattr__(name: str):
    # the writer brings numpy and zstd (the series layout): loaded when a Store is asked for,
    # so that what only needs StoreError (the data types of `import trackside`) stays light
    if name == "Store":
        from .writer import Store

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "STATES",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "check_artifact",
    "check_manifest_entry",
    "media_refs",
    "open_reader",
    "open_readonly",
]
