"""The ICL-versus-fine-tuning comparison: statistics, result files, plots and the report.

Layout: ``config`` (the experiment), ``run`` (cells, evaluation, fine-tunes, resume), ``stats`` (Wilson,
McNemar, the paired sign-flip test), ``records`` (order, draw aggregation into ``Settings``, the choice
of k* and n* on validation, the split names), ``results`` (results.json/csv), ``plots``, ``verdicts``
(the paired test per split), ``circuit_section`` (the circuit-shift analyses at k* and n*), ``markdown``
(report.md) and ``summary`` (the terminal table).
"""
