"""The three ways to run our tasks from the shell: `lm_eval --include_path`, the drop-in
`iclvsft-eval`, and a bare `lm_eval` after `iclvsft-eval register`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_METADATA

from iclvsft_tasks import eval_cli, tasks_dir

BIN = Path(sys.executable).parent
METADATA = json.dumps(SMALL_METADATA)


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(argv, timeout=600):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env())


def _results(output_dir: Path) -> dict:
    [path] = list(output_dir.rglob("results_*.json"))
    return json.loads(path.read_text())


def _model_args(model: Path) -> list[str]:
    return [
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model},dtype=float32",
        "--device",
        "cpu",
        "--batch_size",
        "2",
        "--limit",
        "2",
        "--metadata",
        METADATA,
    ]


def test_python_m_prints_the_task_directory():
    proc = _run([sys.executable, "-m", "iclvsft_tasks"])
    assert proc.returncode == 0 and proc.stdout.strip() == tasks_dir()
    assert (Path(tasks_dir()) / "parity_pattern" / "parity_pattern.yaml").is_file()


def test_lm_eval_with_include_path(tiny_llama, tmp_path):
    proc = _run(
        [
            str(BIN / "lm_eval"),
            "--include_path",
            tasks_dir(),
            *_model_args(tiny_llama),
            "--tasks",
            "parity_pattern_1shot,expression_pattern_broken_0shot",
            "--output_path",
            str(tmp_path),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = _results(tmp_path)
    assert results["n-shot"] == {"parity_pattern_1shot": 1, "expression_pattern_broken_0shot": 0}
    assert "exact_match,extract" in results["results"]["parity_pattern_1shot"]


def test_iclvsft_eval_is_a_drop_in_that_keeps_the_users_include_path(tiny_llama, tmp_path):
    user_tasks = tmp_path / "my_tasks"
    user_tasks.mkdir()
    (user_tasks / "my_parity.yaml").write_text(
        "task: my_parity\n"
        "custom_dataset: !function iclvsft_tasks.lm_eval_glue.load_splits\n"
        "dataset_kwargs: {iclvsft_task: parity_pattern}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: query\ndoc_to_target: answer\n"
        'num_fewshot: 0\ngeneration_kwargs: {until: ["\\n"], max_gen_toks: 3}\n'
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n"
    )
    out = tmp_path / "out"
    proc = _run(
        [
            str(BIN / "iclvsft-eval"),
            "run",
            "--include_path",
            str(user_tasks),
            *_model_args(tiny_llama),
            "--tasks",
            "my_parity,boolean_pattern_mc_2shot",
            "--output_path",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = _results(out)
    assert set(results["results"]) == {"my_parity", "boolean_pattern_mc_2shot"}
    assert results["n-shot"]["boolean_pattern_mc_2shot"] == 2


def test_iclvsft_eval_names_an_unknown_task_in_one_line():
    proc = _run([str(BIN / "iclvsft-eval"), "--model", "dummy", "--tasks", "parity_patern", "--limit", "1"])
    assert proc.returncode == 2
    assert "Tasks not found: parity_patern" in proc.stderr and "Traceback" not in proc.stderr


def test_register_makes_a_bare_lm_eval_find_our_tasks(tiny_llama, tmp_path):
    state, target = eval_cli.registration_state()
    if state != "absent":
        pytest.skip(f"iclvsft is already registered in this environment ({target}); not touching it")
    try:
        assert "not registered" in _run([str(BIN / "iclvsft-eval"), "status"]).stdout
        for _ in range(2):  # idempotent
            proc = _run([str(BIN / "iclvsft-eval"), "register"])
            assert proc.returncode == 0 and "registered" in proc.stdout, proc.stderr
        assert "registered and current" in _run([str(BIN / "iclvsft-eval"), "status"]).stdout
        proc = _run(
            [
                str(BIN / "lm_eval"),
                *_model_args(tiny_llama),
                "--tasks",
                "parity_pattern_0shot",
                "--output_path",
                str(tmp_path),
            ]
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "parity_pattern_0shot" in _results(tmp_path)["results"]
        # While registered, the wrapper adds nothing, so no task is indexed twice.
        assert eval_cli.lm_eval_argv(["--tasks", "parity_pattern"]) == ["--tasks", "parity_pattern"]
    finally:
        proc = _run([str(BIN / "iclvsft-eval"), "unregister"])
    assert proc.returncode == 0 and "unregistered" in proc.stdout
    assert not target.exists()
    assert "not registered" in _run([str(BIN / "iclvsft-eval"), "unregister"]).stdout


def test_wrapper_inserts_our_include_path_only_when_needed(monkeypatch):
    monkeypatch.setattr(eval_cli, "registration_state", lambda: ("absent", Path("/nowhere")))
    ours = tasks_dir()
    assert eval_cli.lm_eval_argv(["run", "--tasks", "x"]) == ["run", "--include_path", ours, "--tasks", "x"]
    assert eval_cli.lm_eval_argv(["ls", "tasks"]) == ["ls", "--include_path", ours, "tasks"]
    assert eval_cli.lm_eval_argv(["--model", "hf", "--tasks", "x"]) == [
        "run",
        "--include_path",
        ours,
        "--model",
        "hf",
        "--tasks",
        "x",
    ]
    assert eval_cli.lm_eval_argv(["--help"]) == ["--help"]
    monkeypatch.setattr(eval_cli, "lm_eval_has_task_plugins", lambda: True)
    assert eval_cli.lm_eval_argv(["run", "--tasks", "x"]) == ["run", "--tasks", "x"]


def test_user_include_path_is_kept_and_ours_prepended(monkeypatch, tmp_path):
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(eval_cli, "registration_state", lambda: ("absent", Path("/nowhere")))
    monkeypatch.setattr(TaskManager, "__init__", TaskManager.__init__)  # restored after the test
    argv = ["run", "--include_path", str(tmp_path), "--tasks", "parity_pattern"]
    assert eval_cli.lm_eval_argv(argv) == argv
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert "parity_pattern" in manager.all_subtasks


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tasks", "parity_pattern_4shot", "--num_fewshot", "2"], ["parity_pattern_4shot runs at 2 shots, not 4"]),
        (["--tasks", "parity_pattern_0shot,code_pattern", "-f", "3"], ["parity_pattern_0shot stays at 0 shots"]),
        (["--tasks=iclvsft_patterns_16shot", "--num_fewshot=1"], ["iclvsft_patterns_16shot runs at 1 shots, not 16"]),
        (["--tasks", "parity_pattern", "--num_fewshot", "2"], []),
        (["--tasks", "parity_pattern_4shot"], []),
    ],
)
def test_num_fewshot_over_a_fixed_shot_variant_warns(argv, expected):
    warnings = eval_cli.num_fewshot_warnings(argv)
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected):
        assert fragment in warning


def test_our_backend_and_fixed_demonstrations_through_the_wrapper(tiny_llama, tmp_path):
    metadata = json.dumps({**SMALL_METADATA, "iclvsft_demos": "fixed", "iclvsft_draw": 2})
    outputs = {}
    for backend in ("hf", "iclvsft-hf"):
        out = tmp_path / backend
        proc = _run(
            [
                str(BIN / "iclvsft-eval"),
                "--model",
                backend,
                "--model_args",
                f"pretrained={tiny_llama},dtype=float32",
                "--device",
                "cpu",
                "--batch_size",
                "1",
                "--limit",
                "4",
                "--metadata",
                metadata,
                "--tasks",
                "expression_pattern_2shot",
                "--log_samples",
                "--output_path",
                str(out),
            ]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        [samples] = list(out.rglob("samples_expression_pattern_2shot_*.jsonl"))
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        outputs[backend] = [(r["doc_id"], r["resps"]) for r in rows]
        prompts = {r["arguments"]["gen_args_0"]["arg_0"].rsplit("\n\n", 1)[0] for r in rows}
        assert len(prompts) == 1  # every query saw the same two demonstrations
    assert outputs["hf"] == outputs["iclvsft-hf"]


@pytest.mark.parametrize(
    "model_args, message",
    [
        ("prefix_cache_mb=lots", "prefix_cache_mb must be a number >= 0, got 'lots'"),
        ("no_such_option=1", "unexpected keyword argument 'no_such_option'"),
    ],
)
def test_a_model_argument_the_backend_rejects_is_one_line(tiny_llama, model_args, message):
    proc = _run(
        [
            str(BIN / "iclvsft-eval"),
            "--model",
            "iclvsft-hf",
            "--model_args",
            f"pretrained={tiny_llama},{model_args}",
            "--device",
            "cpu",
            "--limit",
            "1",
            "--tasks",
            "expression_pattern_0shot",
            "--metadata",
            METADATA,
        ]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("iclvsft-eval: error: cannot create model") and message in last


def test_lm_evals_per_evaluation_noise_is_quiet_unless_verbose(tmp_path, monkeypatch, capfd):
    """Outside a git checkout lm-eval lets git's "fatal:" line through once per evaluation, and warns
    about `--metadata` for every task of ours: both off (same git_hash value), both back with -v."""
    import logging

    import lm_eval.evaluator

    from iclvsft_tasks.lm_eval_glue import quiet_lm_eval_noise

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("ICLVSFT_VERBOSE", raising=False)
    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lm_eval.evaluator.get_git_commit_hash)
    hint = logging.LogRecord("lm_eval.api.task", logging.WARNING, "", 0, "x: Custom kwargs can be passed to "
                             "`--metadata` in console", None, None)  # fmt: skip
    task_logger = logging.getLogger("lm_eval.api.task")
    quiet_lm_eval_noise()
    quiet_lm_eval_noise()
    assert lm_eval.evaluator.get_git_commit_hash() is None and not task_logger.filter(hint)
    assert "fatal" not in capfd.readouterr().err
    monkeypatch.setenv("ICLVSFT_VERBOSE", "1")
    assert lm_eval.evaluator.get_git_commit_hash() is None and task_logger.filter(hint)
    assert "fatal: not a git repository" in capfd.readouterr().err
    assert len(task_logger.filters) == 1
