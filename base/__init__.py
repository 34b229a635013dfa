"""Floor 1, the base every other package stands on: settings, the topic plan, the metric row with
its writer and ClickHouse tables, Kafka client factories, the entry point helper and the dataclass
config flags. Imports no other package of the project (tests/unit/test_layering.py, docs/base.md)."""
