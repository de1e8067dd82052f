"""What users install to talk to tokenbridge: the ``tokenbridge`` command line, and ``tokenbridge dev``, which runs
every process on this machine. The Python client (sync and async) is ``tokenbridge_client``, one source in
``clients/python`` (the ``tokenbridge-client`` distribution), which the command line imports."""
