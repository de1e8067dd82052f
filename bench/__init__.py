"""Benchmarks of tokenbridge (``make bench``)."""
