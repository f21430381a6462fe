"""Memory systems as hooks: fine-tune models larger than the working device's memory.

* :class:`WeightStore`: the weights on a slower tier (a writable memory-mapped
  working copy on disk, or host memory), validated before anything is copied.
* :class:`BlockStreamer`: a hook object that brings a model's blocks to the
  working device one at a time, prefetching the next in the background.
* :class:`StreamedZO`: ZO-SGD steps where both perturbed forwards run through a
  resident block and the previous step's update is applied on arrival, so each
  block travels once per step; bit-identical to the in-memory run.
"""

from .blocks import empty_model, find_blocks, placeholder
from .store import TierCapacityError, WeightsFileError, WeightStore, read_index
from .stream import BlockStreamer
from .zo import StreamedZO

__all__ = ["BlockStreamer", "StreamedZO", "TierCapacityError", "WeightStore", "WeightsFileError",
           "empty_model", "find_blocks", "placeholder", "read_index"]
