"""Alembic, driven from code: `maild db upgrade`, and automatically for embedded SQLite.

Importing alembic (mako and pygments come with it) and loading the scripts takes some
60 ms, which every command would pay only to learn that the schema is current. `at_head`
answers that with plain SQLAlchemy and the migration files' text; alembic is imported
only to migrate, or to judge whatever that quick look cannot vouch for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    text,
)

from maild.db import models  # noqa: F401  (registers the tables on Base.metadata)
from maild.db.base import Base

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")

# A module-level `revision = "0007"` or `down_revision = ("a", "b")`, annotated or not,
# in either quotes (the script template writes repr()s), up to any comment.
_ASSIGNMENT = re.compile(r"^(revision|down_revision)\b\s*(?::[^=\n]*)?=([^#\n]*)", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def _config(engine: Engine) -> Config:
    # Imported here, like every alembic import in this module: see the module docstring.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_config(engine), revision)


# Alembic's own bookkeeping table, as alembic creates it (the stamp `create_fresh` writes).
_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def create_fresh(connection: Connection) -> bool:
    """Build the current schema in one go on a database with no tables, stamped at head,
    as alembic's cookbook advises for new databases; False, touching nothing, when the
    database has tables or the head cannot be read from the files (then `upgrade`).

    Running the migrations one by one on a new SQLite file cost 0.13 s, with alembic's
    import, which a first `maild ingest` or `maild run` would pay. The caller's
    transaction makes it all or nothing; tests/test_migrations.py checks that both
    roads lead to the same schema.
    """
    head = head_in_files()
    if head is None or inspect(connection).get_table_names():
        return False
    Base.metadata.create_all(connection)
    _VERSION.create(connection)
    connection.execute(_VERSION.insert().values(version_num=head))
    return True


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(engine)).get_current_head()


def is_up_to_date(engine: Engine) -> bool:
    return at_head(engine) or current_revision(engine) == head_revision(engine)


def at_head(engine: Engine) -> bool:
    """True when the database is stamped with the one head the migration files name.

    False says only "not sure": there is then something to upgrade, or a case (no
    schema yet, several heads, a file this reading does not understand) for alembic.
    """
    head = head_in_files()
    if head is None:
        return False
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return False
        stamped = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        return list(stamped) == [head]


def head_in_files() -> str | None:
    """The head revision, read from the migration scripts' source without importing them;
    None unless every script names its revisions plainly and exactly one head results."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        if script.name == "__init__.py":
            continue
        found: dict[str, list[str]] = {}
        for match in _ASSIGNMENT.finditer(script.read_text(encoding="utf-8")):
            if match[1] in found:
                return None
            found[match[1]] = _QUOTED.findall(match[2])
        if set(found) != {"revision", "down_revision"} or len(found["revision"]) != 1:
            return None
        revisions.add(found["revision"][0])
        parents.update(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
