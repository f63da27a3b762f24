"""iclvsft_train: the training add-on, a wrapper over TRL's ``trl sft`` (installed with the ``train`` extra).

``launch`` (config resolution, samples -> steps, milestones, the ``trl sft`` subprocess), ``run_state``
(a run folder read back: status, checkpoints, milestones), ``data`` (prompt/completion records from the
one prompt formatter), ``checkpoints`` (the one model loader: base + optional LoRA adapter, also used
by ``iclvsft``), ``merge`` (LoRA adapter -> plain model) and ``cli`` (the ``iclvsft-train`` command).
It imports ``iclvsft_tasks`` and nothing else of ours.
"""

from iclvsft_tasks import __version__

__all__ = ["__version__"]
