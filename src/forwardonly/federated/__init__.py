"""Federated zeroth-order training: clients send seeds and projected gradients, never weights.

:func:`run_federated` trains a ``TrainConfig`` with a ``federated`` section (:class:`FederatedConfig`);
``forwardonly federated --config ...`` is its command line. :mod:`.split` makes the non-IID client
splits, :mod:`.wire` packs a client's steps, :mod:`.engine` holds a federation (clients, their steps, the server replay), :mod:`.run` runs it in this process or
:mod:`.flower` on Flower's simulation engine.
"""

from .config import FederatedConfig
from .split import dirichlet_split

__all__ = ["FederatedConfig", "dirichlet_split", "run_federated"]


def __getattr__(name):
    if name == "run_federated":  # the engine imports the training stack: only when it is used
        from .run import run_federated

        return run_federated
    raise AttributeError(name)
