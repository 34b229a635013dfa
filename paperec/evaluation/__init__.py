"""Offline evaluation on the simulator: every policy trained online with the same budget, then
compared in the (CTR, dwell) plane (``paperec evaluate``; docs/evaluation.md)."""
