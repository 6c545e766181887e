"""Options every streamed source shares."""

from __future__ import annotations

from pydantic import Field

from mmssl.data.sources import SourceOptions


class StreamOptions(SourceOptions):
    shuffle_buffer: int = Field(
        10000,
        ge=1,
        description="Samples per shuffled block of an epoch; a block mixes the several shards it spans. Each "
        "DataLoader worker holds at most its share of one block's raw samples.",
    )
    shuffle_shards: bool = Field(True, description="Visit the shards in a new random order every epoch.")


def limit_counts(counts: list[int], limit: int | None) -> list[int]:
    """Shard counts cut to the first ``limit`` samples (shards past it are dropped)."""
    if limit is None:
        return list(counts)
    out, left = [], limit
    for count in counts:
        if left <= 0:
            break
        out.append(min(count, left))
        left -= out[-1]
    return out
