"""Benchmarks: run each as a module from the repository root, e.g. `python -m benchmarks.serving`
(running a file directly would put benchmarks/ first on sys.path, where learner.py shadows the
learner package)."""
