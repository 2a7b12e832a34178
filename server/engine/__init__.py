"""The Stretch-and-Squeeze engine: a pure library (numpy, torch where needed), no I/O."""
