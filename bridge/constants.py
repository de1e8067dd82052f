"""Names that more than one process must agree on."""

from __future__ import annotations

GENERATE_TASK = "tokenbridge.generate"
GENERATION_QUEUE = "generations"
