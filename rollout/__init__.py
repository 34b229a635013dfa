"""The guarded rollout's controller (floor 3: imports base, schemas and model only).

``sequential`` (the always-valid test per objective), ``controller`` (the pure state machine),
``ope`` (off-policy estimates: the gate before a canary), ``service`` (Kafka, ClickHouse,
``/metrics``), ``cli`` (``paperec rollout``), ``devtools`` (snapshots with a known effect, for
tests and the benchmark). docs/rollout.md.
"""
