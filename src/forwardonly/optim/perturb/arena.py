"""Where :meth:`Directions.hold <forwardonly.optim.perturb.directions.Directions.hold>` keeps a step's
random words: a bump allocator of int64 words per device, its segments allocated once and reused."""

from __future__ import annotations

import torch

HOLD_BYTES = 64 << 20
"""Most bytes of random words :meth:`Directions.hold` keeps (a step of a 512M-parameter model)."""


class Arena:
    """A bump allocator of int64 words on one device: segments are allocated once and reused."""

    SEGMENT = 1 << 21  # words per segment (16 MB)

    def __init__(self, device):
        self.device = device
        self.segments: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        self.seg, self.off, self.used = 0, 0, 0

    def fits(self, words: int) -> bool:
        return (self.used + words) * 8 <= HOLD_BYTES

    def take(self, words: int) -> torch.Tensor:
        while True:
            if self.seg == len(self.segments):
                self.segments.append(torch.empty(max(words, self.SEGMENT), dtype=torch.int64, device=self.device))
            buf = self.segments[self.seg]
            if self.off + words <= buf.numel():
                out = buf[self.off : self.off + words]
                self.off += words
                self.used += words
                return out
            self.seg, self.off = self.seg + 1, 0
