"""Models: loading, the model zoo, and fine-tuning schemes.

* :func:`load_model` - a zoo name, a Hugging Face directory, a GGUF file or a hub id.
* :func:`tiny_model` - a random tiny model with an offline tokenizer, for tests.
* :func:`apply_scheme` / :func:`trainable_parameters` - choose what a zeroth-order
  optimizer may change: ``full``, ``lora``, ``prefix``, ``prompt``, ``head``, ``bitfit``.
* :mod:`forwardonly.models.zoo` - ``forwardonly models fetch NAME`` / ``models list``.
"""

from .loading import load_model, prepare_tokenizer
from .schemes import SCHEMES, apply_scheme, trainable_parameters
from .tiny import tiny_model, tiny_tokenizer

__all__ = [
           "SCHEMES",
           "apply_scheme",
           "load_model",
           "prepare_tokenizer",
           "tiny_model",
           "tiny_tokenizer",
           "trainable_parameters",
]
