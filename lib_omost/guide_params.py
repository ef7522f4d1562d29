"""A guide image's parameters (FlexDiffuse's, lib_omost.guidance): without torch, so the command line and the UI
can offer them without loading it."""

from __future__ import annotations

import dataclasses

ORDERS = ('best_fit', 'text_order', 'direct')  # guidance.py's GUIDE_ORDER_ALIGN, _TEXT, _DIRECT
METHODS = ('combined', 'linear', 'clustered', 'threshold')


@dataclasses.dataclass(frozen=True)
class GuideParams:
    """One guide image's parameters; defaults are guidance.py's `Tweener.__init__` / `Guide.embeds`."""
    method: str = 'combined'      # 'combined': all three sources, as guidance.py; else only the named one
    linear_start: float = 0.0     # Linear ramp at the chunk's first token ...
    linear_end: float = 0.5       # ... and at its last
    clustered: float = 0.5        # Clustered: weight at the similarity peaks
    threshold_floor: float = 0.5  # Threshold: similarity a token needs ...
    threshold_mult: float = 0.5   # ... to get this weight
    max_guidance: float = 0.5     # upper cap on every weight (0: no image guidance)
    header_max: float = 0.15      # cap (+-) on the header token's weight; 1 or more: no cap
    concepts: str = ''            # concept-mapping prompt (empty: off)
    order: str = 'best_fit'       # mapping priority: best_fit, text_order, direct
    reuse: bool = True            # an image token may serve several text tokens

    def sources(self) -> tuple:
        """(linear_start, linear_end, clustered, threshold_mult) after `method` turns the others off."""
        linear = (self.linear_start, self.linear_end) if self.method in ('combined', 'linear') else (0.0, 0.0)
        clustered = self.clustered if self.method in ('combined', 'clustered') else 0.0
        threshold = self.threshold_mult if self.method in ('combined', 'threshold') else 0.0
        return linear[0], linear[1], clustered, threshold
