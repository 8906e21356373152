"""softgate: reinforcement learning of language models with smooth-gated policy optimization.

The maths modules (``gates``, ``losses``, ``aggregate``, ``advantages``, ``diagnostics``, ``logprobs``) take
tensors and return tensors; they import neither transformers nor the trainer.
"""

__version__ = "0.1.0"
