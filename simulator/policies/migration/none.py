"""No migration: homes stay where placement put them."""
from __future__ import annotations

from ..base import MIGRATION, MigrationPolicy


@MIGRATION.register("none")
class NoMigration(MigrationPolicy):
    active = False
