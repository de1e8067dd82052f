"""Stream-consumer workers: ``python -m workers`` runs the processor chain and acknowledges."""

from __future__ import annotations

from workers.consumer import ConsumerWorker
from workers.processors import Chain, GenerationState, Processor, default_processors

__all__ = ["Chain", "ConsumerWorker", "GenerationState", "Processor", "default_processors"]
