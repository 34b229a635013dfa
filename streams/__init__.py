"""paperec: streams."""
