"""paperec: the application on top of every package: the ``paperec`` CLI, the dev stack, the demo,
replay and simulate commands, the evaluation command and the dashboard (docs/base.md, "Entry points")."""

__version__ = "0.1.0"
