"""Deprecated name of the Python client: import ``tokenbridge_client`` (the ``tokenbridge-client`` distribution,
which this one depends on). ``tokenbridge.client`` keeps working, with a warning, until the next minor release."""

from __future__ import annotations

import warnings

from tokenbridge_client.client import *  # noqa: F403  (every public name the module had)

warnings.warn("tokenbridge.client is deprecated: import tokenbridge_client instead", DeprecationWarning, stacklevel=2)
