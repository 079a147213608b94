"""Alembic's entry point for the auth history; run it with `invmesh migrate auth`."""

from auth.models import Base
from mesh.migrations import run_env

run_env(Base.metadata)
