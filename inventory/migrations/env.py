"""Alembic's entry point for the inventory history; run it with `invmesh migrate inventory`."""

from inventory.models import Base
from mesh.migrations import run_env

run_env(Base.metadata)
