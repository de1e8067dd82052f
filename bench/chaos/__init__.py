"""``make chaos``: a steady mixed load on the real processes while faults are injected at random, then a check
of every generation (``python -m bench.chaos --help``)."""
