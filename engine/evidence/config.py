"""How the evidence sink batches, stores, retries and checkpoints (the plans decide the windows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EvidenceConfig:
    audit_key: str = "audit-log"
    checkpoint_entries: int = 1000
    checkpoint_s: float = 60.0
    grace_ms: int = 5_000
    retry_s: float = 5.0
    replay_chunk: int = 8
    writer_queue: int = 10_000
    """Batches (or windows, for the sealer) waiting before the collector waits (back-pressure)."""
    writer: Literal["thread", "process"] = "thread"
    """Where batches are hashed, signed and stored: a thread beside the event loop, or
    (``process``, Linux) a forked sealer process on another core (engine/evidence/sealer.py)."""
