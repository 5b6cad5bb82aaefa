"""editing layer: edit units and rules, the `HSpaceEditor` API, the edit benchmark."""

from hsae.editing.editor import PAPER, FeatureEdit, HSpaceEditor

__all__ = ["PAPER", "FeatureEdit", "HSpaceEditor"]
