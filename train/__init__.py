"""iclvsft_train: the training add-on (a wrapper over TRL's ``trl sft``), installed with the ``train`` extra.

The wrapper itself arrives with the training issue; this package reserves the import name.
"""
