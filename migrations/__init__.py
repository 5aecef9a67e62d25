"""Numbered, forward-only SQL migrations of the cityingest store and the runner that applies them."""

from migrations.runner import Migration, apply_migrations, discover, plan

__all__ = ["Migration", "apply_migrations", "discover", "plan"]
