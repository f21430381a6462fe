"""forwardonly: training and fine-tuning without backpropagation.

Zeroth-order optimizers with a ``torch.optim`` API (:mod:`forwardonly.optim`),
language-model fine-tuning (:mod:`forwardonly.models`, :mod:`forwardonly.tasks`,
:mod:`forwardonly.lm`), forward-only local learning (:mod:`forwardonly.local`)
and a benchmark toolkit (:mod:`forwardonly.bench`).
"""

__version__ = "0.1.0"
