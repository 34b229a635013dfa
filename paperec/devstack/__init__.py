"""Local dev stack: Apache Kafka (one KRaft node, or a replicated cluster with ``--brokers 3``)
and a ClickHouse server on loopback.

``paperec devstack up | down | status`` (see :mod:`paperec.devstack.cli`). Everything the stack
writes (the broker's jar cache, data, logs, configs, PID files) lives under
``Settings.state_path`` (default ``.paperec/``, git-ignored); nothing under ``/etc`` is edited.
"""

from __future__ import annotations

from paperec.devstack.process import DevstackError, Service

__all__ = ["DevstackError", "Service"]
