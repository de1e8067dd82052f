"""``python -m tokenbridge``: the ``tokenbridge`` command where its console script is not installed.

A PaaS build installs ``requirements.txt`` and not the project, so ``heroku run -- python -m tokenbridge
dead-letters list`` works from the app's directory where ``tokenbridge dead-letters list`` is not found.
"""

from __future__ import annotations

import sys

from tokenbridge.cli import main

if __name__ == "__main__":
    sys.exit(main())
