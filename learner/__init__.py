"""paperec: learner."""
