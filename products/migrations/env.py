"""Alembic's entry point for the products history; run it with `invmesh migrate products`."""

from mesh.migrations import run_env
from products.models import Base

run_env(Base.metadata)
