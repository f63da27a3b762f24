"""``results.json`` and ``results.csv``: every evaluated cell of a run (draws not aggregated), deterministically."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from iclvsft.compare.records import sort_records
from iclvsft_tasks.atomic import atomic_write_text

#: Columns of results.csv, in order; unknown record keys follow, sorted.
CSV_COLUMNS = (
    "key",
    "model",
    "task",
    "condition",
    "split",
    "shots",
    "ft_samples",
    "recipe",
    "draw",
    "seed",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "shortcut",
    "shortcut_rate",
    "shortcut_ci_low",
    "shortcut_ci_high",
    "invalid",
    "invalid_rate",
    "invalid_ci_low",
    "invalid_ci_high",
    "fingerprint",
    "prompt_tokens",
    "train_tokens",
    "wall_time_s",
    "predictions",
    "reproduce",
)


def write_results(records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.csv`` under ``out_dir``; same records, same bytes."""
    rows = sort_records(records)
    out = Path(out_dir)
    json_path, csv_path = out / "results.json", out / "results.csv"
    atomic_write_text(json_path, json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
    columns = list(CSV_COLUMNS) + extra
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_csv_value(r.get(c)) for c in columns])
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value
