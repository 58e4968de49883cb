"""The shapes of the read API's answers, for its OpenAPI document (docs/openapi.json).

Answers are written as plain JSON (the records streamed); these models only describe them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

DECISION = "The id of the guard's decision on this request: its access.decision audit entry."


class Point(BaseModel):
    device: str
    point: str
    unit: str | None
    signal: str | None
    plan: str = Field(description="The digest of the device's latest plan, which decided.")


class Points(BaseModel):
    decision: str = Field(description=DECISION)
    principal: str
    points: list[Point]


class Record(BaseModel):
    """A reading or a gap record, with its batch, position and whether the batch verifies."""

    device: str
    point: str
    type: str = Field(description="reading or gap")
    time: str = Field(description="The slot it fills, else when it was collected (RFC 3339).")
    value: float | int | bool | str | None
    quality: str | None
    reason: str | None = Field(description="Why a gap record's sample was not taken.")
    detail: str | None
    collected_at: str | None
    scheduled_at: str | None
    source_at: str | None
    raw_code: int | str | None
    batch: int
    position: int
    batch_verified: bool | None = Field(
        description="Whether the batch's records hash to its signed root and its signatures"
        " verify under the server's trusted keys (null: the server trusts no keys)."
    )


class Recorded(BaseModel):
    decision: str = Field(description=DECISION)
    device: str
    point: str
    start: str
    end: str
    items: list[Record]


class Interval(BaseModel):
    start: str
    end: str
    count: int = Field(description="Readings in the interval.")
    min: float | None = Field(description="Of the readings' numeric values.")
    max: float | None
    mean: float | None
    gaps: int = Field(description="Gap records: samples due but not taken.")
    unverified: int = Field(description="Records whose batch does not verify.")


class Summary(BaseModel):
    decision: str = Field(description=DECISION)
    device: str
    point: str
    start: str
    end: str
    interval: str
    items: list[Interval]


class Inclusion(BaseModel):
    leaf_index: int
    tree_size: int
    hashes: list[str] = Field(description="RFC 9162 inclusion proof, hex, lowest level first.")


class Signature(BaseModel):
    key: str
    signature: str = Field(description="Ed25519 over the statement's bytes, hex.")


class Batch(BaseModel):
    statement: str = Field(description="The signed batch statement (canonical JSON).")
    signatures: list[Signature]
    required_keys: list[str] | None


class Leaf(BaseModel):
    batch: int
    position: int
    leaf: str = Field(description="The record's leaf: the bytes its batch's tree hashes.")
    leaf_hash: str


class Log(BaseModel):
    entry: str | None = Field(description="The batch's batch.stored audit entry.")
    seq: int
    checkpoint: str | None = Field(description="The latest signed checkpoint (a signed note).")
    tree_size: int | None
    hashes: list[str] | None = Field(
        description="The entry's inclusion proof under the checkpoint's root (null: the"
        " checkpoint does not cover it yet)."
    )


class Proof(BaseModel):
    decision: str = Field(description=DECISION)
    record: Leaf
    inclusion: Inclusion
    batch: Batch
    log: Log


class Refusal(BaseModel):
    decision: str | None = Field(
        description=DECISION + " Null when the request was refused before the guard: its"
        " caller not authenticated (401, 503), no decision, no audit entry."
    )
    status: int
    error: str
    message: str
    points: list[dict[str, object]] = Field(
        description="Each point asked for: allowed or not, and why."
    )
