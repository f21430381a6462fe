"""Reference twin of :class:`~forwardonly.optim.ZOSGDSparse`: MeZO's ZO-SGD with whole masked directions."""

from __future__ import annotations

from .zosgd_reference import ZOSGDReference
from .zosgd_sparse import mask


class ZOSGDSparseReference(ZOSGDReference):
    """:class:`ZOSGDReference` whose direction ``z(step, probe, i)`` is multiplied by the whole
    mask ``m(step, i)`` (materialised, regenerated every time). Same arguments as
    :class:`~forwardonly.optim.ZOSGDSparse`."""

    def __init__(self, params, lr=1e-6, density=0.2, **kw):
        super().__init__(params, lr=lr, **kw)
        self.density = density

    def z(self, p, step, probe, i):
        return super().z(p, step, probe, i) * mask(p.shape, self.seed, step, i, self.density, p.device)
