"""Reference twin of :class:`~forwardonly.optim.ZOSGDBlock`: MeZO's in-place ZO-SGD on block ``t % B``."""

from __future__ import annotations

import torch

from ..blocks import block_groups
from .zosgd_reference import ZOSGDReference


class ZOSGDBlockReference(ZOSGDReference):
    """Step ``t`` runs :class:`ZOSGDReference` on the parameters of block ``t % B`` only.
    Same arguments and blocks as :class:`~forwardonly.optim.ZOSGDBlock`."""

    def __init__(self, params, lr=1e-6, **kw):
        super().__init__(block_groups(params), lr=lr, **kw)
        self._active = None

    def _params(self):
        for i, p, group in super()._params():
            if self._active is None or self.param_groups[self._active] is group:
                yield i, p, group

    @torch.no_grad()
    def step(self, closure):
        self._active = self.state["zo"]["step"] % len(self.param_groups)
        try:
            return super().step(closure)
        finally:
            self._active = None
