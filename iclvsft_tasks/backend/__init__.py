"""The ``iclvsft-hf`` lm-eval backend (``hflm``), its validated arguments (``options``), its prefix
KV-cache store (``prefix_cache``) and the rules for which transformers caches may be reused
(``kvcache``, shared with the circuit analysis).

Importing this package loads neither torch nor lm-eval's model code; ``hflm`` does.
"""
