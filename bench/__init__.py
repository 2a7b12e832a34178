"""Benchmarks: run each as a script (python bench/<name>.py); importable as a package for their tests."""
