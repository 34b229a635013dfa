"""Floor 1, the base every other package stands on: settings, the topic plan, the metric row with
its writer and ClickHouse tables. Imports no other package of the project (tests/unit/test_layering.py)."""
