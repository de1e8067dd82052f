"""Names that more than one process must agree on (no Celery import here)."""

GENERATE_TASK = "tokenbridge.generate"
GENERATION_QUEUE = "generations"
