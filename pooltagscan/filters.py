"""Record filters of `--tag`, `--min-confidence`, `--pool`, `--state` and `--source`,
vectorized."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pooltagscan.records import CONFIDENCE_NAMES, POOL_NAMES, SOURCE_NAMES, STATE_NAMES, take
from pooltagscan.tags.patterns import TagMatcher


@dataclass
class RecordFilter:
    tags: TagMatcher | None = None
    min_confidence: int = 0
    pools: frozenset[int] | None = None
    states: frozenset[int] | None = None
    sources: frozenset[int] | None = None

    @classmethod
    def from_names(
        cls,
        tag_patterns: Iterable[str] = (),
        min_confidence: str = "low",
        pools: Iterable[str] = (),
        states: Iterable[str] = (),
        sources: Iterable[str] = (),
    ) -> RecordFilter:
        """Build from option values; raises ValueError on a bad pattern or name."""
        patterns = list(tag_patterns)
        pools, states, sources = list(pools), list(states), list(sources)
        return cls(
            tags=TagMatcher(patterns) if patterns else None,
            min_confidence=CONFIDENCE_NAMES.index(min_confidence),
            pools=frozenset(POOL_NAMES.index(p) for p in pools) if pools else None,
            states=frozenset(STATE_NAMES.index(s) for s in states) if states else None,
            sources=frozenset(SOURCE_NAMES.index(s) for s in sources) if sources else None,
        )

    def apply(self, records: np.ndarray) -> np.ndarray:
        keep = records["confidence"] >= self.min_confidence
        if self.pools is not None:
            keep &= np.isin(records["pool"], list(self.pools))
        if self.states is not None:
            keep &= np.isin(records["state"], list(self.states))
        if self.sources is not None:
            keep &= np.isin(records["source"], list(self.sources))
        if self.tags is not None and keep.any():
            keep[keep] = self.tags.matches_u32(records["tag"][keep])
        return records if keep.all() else take(records, keep)
