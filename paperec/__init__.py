"""paperec: operations glue (settings, CLI, dev stack, topics, metric tables)."""

__version__ = "0.1.0"
