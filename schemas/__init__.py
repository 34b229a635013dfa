"""paperec: schemas."""
