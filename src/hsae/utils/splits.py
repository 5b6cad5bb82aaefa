"""The one train/val/test policy of the project, shared by every stage.

Partition codes follow CelebA's `list_eval_partition.txt` (0 train, 1 val, 2 test). A store or
data set without a partition trains on all of its rows; asking such a store for its val or test
rows is an error (evaluating on the training rows would be silently optimistic), unless the
caller treats the split as optional (`optional_split_rows`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SPLIT_CHOICES = ("train", "val", "test", "all")


def has_partition(store: Any) -> bool:
    """True when the store carries a train/val/test code for at least one row."""
    splits = getattr(store, "splits", None)
    return splits is not None and any(s is not None for s in splits)


def split_rows(store: Any, split: str) -> np.ndarray:
    """Rows of `split`, ascending, with an error that says which splits exist when it is empty."""
    if split == "all" or (split == "train" and not has_partition(store)):
        return np.arange(len(store), dtype=np.int64)
    idx = np.asarray(store.indices_for_split(split), dtype=np.int64)
    if idx.size == 0:
        have = sorted({s for s in store.splits or [] if s is not None})
        raise ValueError(
            f"activation store {getattr(store, 'path', '?')} has no rows in split {split!r} "
            f"(partition codes present: {have}; 0 train, 1 val, 2 test); pick another --split"
        )
    return idx


def optional_split_rows(store: Any, split: str) -> np.ndarray | None:
    """Rows of `split`, or None when the store has no partition or no such rows."""
    if not has_partition(store):
        return None
    rows = np.asarray(store.indices_for_split(split), dtype=np.int64)
    return rows if len(rows) else None
