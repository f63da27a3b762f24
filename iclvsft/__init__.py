"""iclvsft: when does in-context learning beat fine-tuning? The application.

``iclvsft.compare`` (ICL at k shots vs fine-tuning after n samples, on the same held-out items),
``iclvsft.circuits`` (the circuit-shift analysis), ``iclvsft.models`` (built-in models from PyPI
GGUF packages) and the ``iclvsft`` command. It builds on ``iclvsft_tasks`` (the lm-eval plugin:
tasks, splits, prompts, scoring, the ``iclvsft-hf`` backend) and ``iclvsft_train`` (the ``trl sft``
wrapper).
"""

from iclvsft_tasks import __version__

__all__ = ["__version__"]
