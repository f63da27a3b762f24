"""iclvsft-train: the data matches lm-eval byte for byte, real `trl sft` runs through the wrapper
produce milestone checkpoints that lm-eval scores, a killed run resumes, bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_METADATA

import iclvsft_tasks
from iclvsft_tasks.data.spec import DataSpec
from iclvsft_tasks.data.splits import build_splits
from iclvsft_tasks.prompts import TARGET_DELIMITER
from iclvsft_tasks.tasks.registry import TASKS
from iclvsft_train import launch
from iclvsft_train.data import DataOptions, build_records
from iclvsft_train.run_state import TrainingRun

BIN = Path(sys.executable).parent
SIZES = {
    "train": SMALL_METADATA["iclvsft_train_size"],
    "test": SMALL_METADATA["iclvsft_test_size"],
    "test_broken": SMALL_METADATA["iclvsft_test_broken_size"],
    "validation": SMALL_METADATA["iclvsft_validation_size"],
}
SIZE_FLAGS = ["--train-size", "200", "--test-size", "12", "--test-broken-size", "12", "--validation-size", "10"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _train(args, timeout=600, **kwargs):
    return subprocess.run(
        [str(BIN / "iclvsft-train"), *args], capture_output=True, text=True, timeout=timeout, env=_env(), **kwargs
    )


# --- data --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tm():
    return iclvsft_tasks.task_manager(metadata=dict(SMALL_METADATA))


@pytest.mark.parametrize("task_name", list(TASKS))
def test_records_are_byte_identical_to_lm_evals_prompt_and_target(tm, task_name):
    options = DataOptions.create(task_name, 40, DataSpec.from_sizes(SIZES), train_shots=[0, 1, 3])
    records = build_records(options)
    task = tm.load([f"{task_name}_0shot"])["tasks"][f"{task_name}_0shot"]
    docs = {d["id"]: d for d in task.fewshot_docs()}  # the train split, as lm-eval holds it
    assert {r["shots"] for r in records} == {0, 1, 3}
    for record in records:
        doc = docs[record["id"]]
        demos = [docs[i] for i in record["demo_ids"]]
        task.sampler.sample = lambda n, eval_doc=None, df=None, _demos=demos, **kw: _demos[:n]
        assert record["prompt"] == task.fewshot_context(doc, num_fewshot=record["shots"])
        assert record["completion"] == TARGET_DELIMITER + task.doc_to_target(doc)
        if record["shots"] == 0:
            assert record["prompt"] == task.fewshot_context(doc, num_fewshot=0)


def test_training_items_never_appear_in_evaluation_splits():
    options = DataOptions.create("expression_pattern,parity_pattern", 150, DataSpec.from_sizes(SIZES))
    records = build_records(options)
    assert [len([r for r in records if r["task"] == t]) for t in options.tasks] == [75, 75]
    for task in options.tasks:
        splits = build_splits(options.spec(task))
        held_out = {i["id"] for s in ("validation", "test", "test_broken") for i in splits[s]}
        assert not held_out & {r["id"] for r in records}


def test_records_are_deterministic_and_seeded():
    a = build_records(DataOptions.create("boolean_pattern", 30, DataSpec.from_sizes(SIZES), train_shots=[0, 2]))
    b = build_records(DataOptions.create("boolean_pattern", 30, DataSpec.from_sizes(SIZES), train_shots=[0, 2]))
    c = build_records(DataOptions.create("boolean_pattern", 30, DataSpec.from_sizes(SIZES, seed=1), train_shots=[0, 2]))
    assert a == b and a != c


# --- samples -> steps ---------------------------------------------------------------------------------


def test_milestones_map_to_whole_batches():
    plan = launch.plan_schedule(1600, 1, per_device=4, accumulation=4, processes=1, milestones=[160, 480, 1600])
    assert plan.effective_batch == 16 and plan.max_steps == 100
    assert plan.milestone_steps == {160: 10, 480: 30, 1600: 100} and plan.save_steps == 10
    three_epochs = launch.plan_schedule(96, 3, per_device=8, accumulation=1, processes=2, milestones=[288])
    assert three_epochs.max_steps == 18 and three_epochs.samples_seen == 288
    with pytest.raises(launch.IclvsftError, match="use 96 or 112"):
        launch.plan_schedule(100, 1, 4, 4, 1, [])
    with pytest.raises(launch.IclvsftError, match="milestone 40"):
        launch.plan_schedule(160, 1, 4, 4, 1, [40])
    with pytest.raises(launch.IclvsftError, match="at most the 160"):
        launch.plan_schedule(160, 1, 4, 4, 1, [320])


# --- argument pass-through -------------------------------------------------------------------------------


def test_accelerate_and_multinode_flags_reach_trl_sft_unchanged(tiny_llama, tmp_path):
    # fsdp2, not zero3: a DeepSpeed profile is refused where DeepSpeed is not installed (test_bad_input)
    out = tmp_path / "run"
    flags = [
        "--num_processes",
        "8",
        "--accelerate_config=fsdp2",
        "--main_process_ip",
        "10.1.2.3",
        "--main_process_port",
        "29500",
        "--machine_rank",
        "0",
        "--num_machines",
        "2",
        "--deepspeed_multinode_launcher",
        "standard",
        "--learning_rate",
        "3e-4",
        "--lora_r",
        "8",
    ]
    proc = _train(
        [
            "--task",
            "parity_pattern",
            "--samples",
            "64",
            "--model_name_or_path",
            str(tiny_llama),
            "--output_dir",
            str(out),
            *SIZE_FLAGS,
            "--dry-run",
            *flags,
        ]
    )
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.strip().split(" ")
    sft = command.index("sft")
    expected = ["--config", str(out / "resolved.yaml"), *flags]
    expected[expected.index("--accelerate_config=fsdp2")] = "--accelerate_config"
    expected.insert(expected.index("--accelerate_config") + 1, "fsdp2")
    assert command[sft + 1 :] == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 8 and manifest["effective_batch"] == 32 and manifest["max_steps"] == 2
    resolved = (out / "resolved.yaml").read_text()
    assert "num_processes" not in resolved  # an accelerate profile was given: its values stand


def test_trl_command_runs_in_this_environment():
    cmd = launch.trl_command(Path("/x"), ["--multi_gpu", "--use_cpu", "true"], resume_from=Path("/x/checkpoint-5"))
    assert cmd[0] == sys.executable and cmd[3] == "sft"
    assert cmd[4:] == [
        "--config",
        "/x/resolved.yaml",
        "--multi_gpu",
        "--use_cpu",
        "true",
        "--resume_from_checkpoint",
        "/x/checkpoint-5",
    ]


# --- real runs ------------------------------------------------------------------------------------------


def _lm_eval_scores(model_args: str, task: str = "parity_pattern_0shot") -> dict:
    from lm_eval import simple_evaluate

    tm = iclvsft_tasks.task_manager(metadata=dict(SMALL_METADATA))
    result = simple_evaluate(
        model="hf",
        model_args=f"{model_args},dtype=float32",
        device="cpu",
        batch_size=4,
        tasks=[task],
        task_manager=tm,
        limit=6,
        bootstrap_iters=0,
        log_samples=True,
    )
    return result


def _losses(checkpoint: Path) -> list[float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.parametrize("recipe, lr", [("lora", "3e-3"), ("full", "1e-3")])
def test_trl_sft_run_writes_milestones_that_lm_eval_scores(tiny_llama, tmp_path, recipe, lr):
    out = tmp_path / recipe
    proc = _train(
        [
            "--task",
            "parity_pattern",
            "--samples",
            "96",
            "--model_name_or_path",
            str(tiny_llama),
            "--output_dir",
            str(out),
            "--recipe",
            recipe,
            "--milestones",
            "24,48,96",
            *SIZE_FLAGS,
            "--learning_rate",
            lr,
            "--logging_steps",
            "2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["recipe"] == recipe
    assert manifest["samples_seen"] == 96 and manifest["global_step"] == 24
    assert set(manifest["versions"]) >= {"torch", "transformers", "trl", "peft"}
    assert manifest["split_fingerprints"]["parity_pattern"]["test"]
    assert not list(out.glob("checkpoint-*"))
    for samples, step in ((24, 6), (48, 12), (96, 24)):
        milestone = out / "milestones" / f"samples-{samples}"
        assert manifest["milestones"][str(samples)]["path"] == f"milestones/samples-{samples}"  # in the folder
        assert json.loads((milestone / "trainer_state.json").read_text())["global_step"] == step
        assert not (milestone / "optimizer.pt").exists()
    folder = TrainingRun.load(out)  # what iclvsft compare reads back
    assert [(m.samples, m.step, m.path) for m in folder.milestones] == [
        (n, n // 4, out / "milestones" / f"samples-{n}") for n in (24, 48, 96)
    ]
    assert all(m.adapter == (recipe == "lora") for m in folder.milestones) and folder.logging_steps == 6
    assert 0 < folder.milestone(24).training_tokens() < folder.milestone(96).training_tokens()
    losses = _losses(out / "milestones" / "samples-96")
    assert losses[-1] < losses[0], losses
    is_lora = recipe == "lora"
    assert (out / "milestones" / "samples-48" / ("adapter_config.json" if is_lora else "config.json")).is_file()
    for milestone in ("samples-24", "samples-96"):
        path = out / "milestones" / milestone
        args = f"pretrained={tiny_llama},peft={path}" if is_lora else f"pretrained={path}"
        assert 0.0 <= _lm_eval_scores(args)["results"]["parity_pattern_0shot"]["exact_match,extract"] <= 1.0
    if is_lora:
        merged = tmp_path / "merged"
        proc = _train(["merge", "--adapter", str(out / "milestones" / "samples-96"), "--out", str(merged)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        with_peft = _lm_eval_scores(f"pretrained={tiny_llama},peft={out / 'milestones' / 'samples-96'}")
        as_merged = _lm_eval_scores(f"pretrained={merged}")
        responses = [[s["resps"] for s in r["samples"]["parity_pattern_0shot"]] for r in (with_peft, as_merged)]
        assert responses[0] == responses[1]


def test_a_killed_run_resumes_to_the_same_samples_seen(tiny_llama, tmp_path):
    out = tmp_path / "killed"
    args = [
        "--task",
        "boolean_pattern",
        "--samples",
        "600",
        "--model_name_or_path",
        str(tiny_llama),
        "--output_dir",
        str(out),
        "--milestones",
        "20,300,600",
        *SIZE_FLAGS,
        "--train-size",
        "700",
        "--logging_steps",
        "10",
    ]
    process = subprocess.Popen(
        [str(BIN / "iclvsft-train"), *args],
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not TrainingRun.load(out).complete_checkpoints():
            assert process.poll() is None, process.stderr.read()[-2000:]
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # kill -9, child processes included
        process.wait()
    first = TrainingRun.load(out).complete_checkpoints()
    assert first, "no checkpoint appeared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert TrainingRun.load(out).can_resume
    assert _train(args).returncode == 2  # the folder holds a run: a plain rerun is refused
    proc = _train([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint-" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["samples_seen"] == 600 and manifest["global_step"] == 150
    for samples in (20, 300, 600):
        assert (out / "milestones" / f"samples-{samples}" / "adapter_model.safetensors").is_file()
    assert "nothing to resume" in _train([*args, "--resume"]).stderr


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_args, message",
    [
        (
            lambda m, o: ["--task", "parity", "--samples", "8", "--model_name_or_path", m, "--output_dir", o],
            "unknown task 'parity'",
        ),
        (
            lambda m, o: ["--task", "parity_pattern", "--samples", "0", "--model_name_or_path", m, "--output_dir", o],
            "positive integer",
        ),
        (
            lambda m, o: ["--task", "parity_pattern", "--samples", "-4", "--model_name_or_path", m, "--output_dir", o],
            "positive integer",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "400",
                "--model_name_or_path",
                m,
                "--output_dir",
                o,
                "--train-size",
                "100",
            ],
            "train split holds 100",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "8",
                "--model_name_or_path",
                "/no/such/model",
                "--output_dir",
                o,
            ],
            "model directory /no/such/model does not exist",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "8",
                "--model_name_or_path",
                m,
                "--output_dir",
                o,
                "--lerning_rate",
                "1e-3",
            ],
            "unknown option --lerning_rate",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "8",
                "--model_name_or_path",
                m,
                "--output_dir",
                o,
                "--max_steps",
                "5",
            ],
            "max_steps is set by iclvsft-train",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "8",
                "--model_name_or_path",
                m,
                "--output_dir",
                o,
                "--recipe",
                "qlora",
            ],
            "invalid choice",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "8",
                "--model_name_or_path",
                m,
                "--output_dir",
                o + "/file/sub",
            ],
            "is a file; choose another path",
        ),
        (
            lambda m, o: [
                "--task",
                "parity_pattern",
                "--samples",
                "8",
                "--model_name_or_path",
                m,
                "--output_dir",
                o,
                "--resume",
            ],
            "nothing to resume",
        ),
        (
            lambda m, o: ["--task", "parity_pattern", "--samples", "10", "--model_name_or_path", m, "--output_dir", o],
            "not a multiple of the effective batch 4",
        ),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tiny_llama, tmp_path, make_args, message):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    args = make_args(str(tiny_llama), str(out))
    if "/file/sub" in args[-1]:
        args[-1] = str(tmp_path / "file" / "sub")
    proc = _train([*args, *SIZE_FLAGS[2:]] if "--train-size" in args else [*args, *SIZE_FLAGS])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() or not any(out.iterdir())
    assert (tmp_path / "file").read_text() == "x"


def test_platform_fixes_for_cpu_and_cuda(monkeypatch):
    import importlib.util

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = launch.platform_defaults(cuda=False)
    assert cpu["bf16"] is False and cpu["gradient_checkpointing"] is False
    assert int(cpu["env"]["OMP_NUM_THREADS"]) >= 1
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a)
    )
    assert launch.platform_defaults(cuda=True) == {"bf16": True, "attn_implementation": "sdpa"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a)
    )
    assert launch.platform_defaults(cuda=True)["attn_implementation"] == "flash_attention_2"


@pytest.mark.parametrize(
    "flags, dtype",
    [
        ({}, "float32"),
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"bf16": True, "use_cpu": True}, "bfloat16"),  # autocast to bfloat16: the products run in it
        ({"fp16": True}, "float16"),
    ],
)
def test_iclvsft_train_warns_when_its_half_precision_is_slow_here(monkeypatch, capsys, flags, dtype):
    from types import SimpleNamespace

    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch, "slow_half_precision_once", lambda d, device: asked.append((d, device)) or "slow")
    sft_args = SimpleNamespace(bf16=flags.get("bf16", False), fp16=flags.get("fp16", False), use_cpu=False)
    launch._warn_if_half_precision_is_slow(sft_args, SimpleNamespace(dtype=flags.get("dtype", "float32")))
    assert asked == [(dtype, "cpu")]
    assert capsys.readouterr().err == "iclvsft-train: warning: slow\n"
