"""paperec: actor_service."""
