"""Circuit-shift analysis: which attention heads and MLPs in-context learning and fine-tuning change.

The paper explains ICL's advantage by a "circuit shift": demonstrations change the computation in
attention heads and MLP layers more than fine-tuning does. This package measures it::

    from iclvsft.circuits import CircuitsConfig, run_circuits
    result = run_circuits(CircuitsConfig(model="default", task="expression_pattern", shots=8,
                                         ft_checkpoint="runs/compare/ft/.../milestones/samples-400"))
    result["verdict"]      # {"heads": "ICL's shift exceeds FT's", "mlps": ...}

Layout: ``pairs`` (clean/corrupt items and the metric's tokens), ``patching`` (hooks, attribution
and activation patching), ``shift`` (importance maps, distances, bootstrap, Spearman), ``plots``,
``report``, ``run`` (conditions and outputs; models load through ``iclvsft_train.checkpoints``).
Plain PyTorch hooks on transformers modules; no TransformerLens.
"""

from iclvsft.circuits.pairs import Pair, answer_tokens, build_pair, make_pairs
from iclvsft.circuits.patching import (
    Components,
    Scores,
    activation_scores,
    attribution_scores,
    components,
    metric,
)
from iclvsft.circuits.run import (
    CircuitsConfig,
    check_architecture,
    run_circuits,
    score_condition,
)
from iclvsft.circuits.shift import bootstrap_shift, importance_map, shift, spearman, top_k

__all__ = [
    "CircuitsConfig",
    "Components",
    "Pair",
    "Scores",
    "activation_scores",
    "answer_tokens",
    "attribution_scores",
    "bootstrap_shift",
    "build_pair",
    "check_architecture",
    "components",
    "importance_map",
    "make_pairs",
    "metric",
    "run_circuits",
    "score_condition",
    "shift",
    "spearman",
    "top_k",
]
