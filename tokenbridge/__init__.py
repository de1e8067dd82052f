"""What users install to talk to tokenbridge: the Python client (sync and async), the ``tokenbridge`` command
line, and ``tokenbridge dev``, which runs every process on this machine."""
