"""``python -m iclvsft_tasks`` prints our lm-eval task directory, for ``--include_path``."""

from iclvsft_tasks.lm_eval_glue import tasks_dir

print(tasks_dir())
