"""How iclvsft-train runs TRL: the compact CPU loss (and its dense small head) gives plain `trl sft`'s
losses, one-process runs start their worker as accelerate would without its launcher's imports, every
process of a run dies with it, one live run per folder, and --dry-run prints a `trl sft` line that a shell
runs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclvsft_train import fast_sft, launch, runlock
from iclvsft_train.run_state import TRAINED_FILE, TrainingRun

BIN = Path(sys.executable).parent
SIZE_FLAGS = ["--train-size", "200", "--test-size", "12", "--test-broken-size", "12", "--validation-size", "10"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _args(model: Path, out: Path, *more: str, samples: int = 16, recipe: str = "lora") -> list[str]:
    return [
        "--task",
        "relation_pattern",
        "--samples",
        str(samples),
        "--train-shots",
        "0,2",
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        "--recipe",
        recipe,
        *SIZE_FLAGS,
        "--train-size",
        str(max(200, samples)),
        *more,
    ]


def _train(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "iclvsft-train"), *args], capture_output=True, text=True, timeout=600, env=_env(), **kwargs
    )


# --- the compact loss -------------------------------------------------------------------------------------


def test_the_compact_path_scores_only_labelled_positions_on_cpu(tiny_llama, monkeypatch):
    import torch
    import trl.kernels.chunked_logprob as kernels
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(trl_utils, "_use_triton", trl_utils._use_triton)  # undone after the test
    assert fast_sft.install_compact_loss()
    assert trl_utils._use_triton(torch.device("cpu"))
    assert not kernels._use_triton(torch.device("cpu"))  # Triton kernels are still not picked on CPU

    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *rest):
        scored.append(hidden.shape[0])
        return apply(hidden, *rest)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.arange(5, 45).reshape(2, 20)
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]  # three completion tokens per row
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert scored == [6]  # 2 rows x 3 labelled positions (shifted), not 2 x 19
    full = model(input_ids=ids).logits[:, :-1].log_softmax(-1)
    expected = full.gather(-1, ids[:, 1:, None])[..., 0][:, -3:]
    assert torch.allclose(out.log_probs[:, -3:], expected, atol=1e-5)


def test_an_unexpected_trl_falls_back_to_plain_behaviour_with_a_warning(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.warns(UserWarning, match="training as plain trl sft does"):
        assert not fast_sft.install_compact_loss()


@pytest.mark.parametrize("softcap, scale, temperature, bias", [(None, 1.0, 1.0, False), (30.0, 0.5, 0.7, True)])
def test_the_dense_head_gives_the_chunked_kernels_outputs_and_gradients(softcap, scale, temperature, bias):
    import torch
    from trl.kernels import ChunkedLogProbFunction

    torch.manual_seed(0)
    outputs = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    targets = torch.randint(0, 300, (6,))
    results, grads = {}, {}
    for name, fn in (("chunked", ChunkedLogProbFunction.apply), ("dense", fast_sft.dense_logprobs)):
        torch.manual_seed(1)
        hidden = torch.randn(6, 16, requires_grad=True)
        weight = torch.randn(300, 16, requires_grad=True)
        b = torch.randn(300, requires_grad=True) if bias else None
        # chunk 128 < vocab 300: the kernel folds three vocabulary tiles
        results[name] = fn(hidden, weight, b, targets, temperature, 128, softcap, scale, outputs)
        results[name][0].sum().backward()
        grads[name] = [hidden.grad, weight.grad] + ([b.grad] if bias else [])
    for chunked, dense in zip(results["chunked"], results["dense"], strict=True):
        if chunked.dtype == torch.bool:
            assert torch.equal(chunked, dense)
        else:
            assert torch.allclose(chunked, dense, rtol=1e-5, atol=1e-5)
    for chunked, dense in zip(grads["chunked"], grads["dense"], strict=True):
        assert torch.allclose(chunked, dense, rtol=1e-5, atol=1e-6)


def test_the_dense_head_serves_small_cpu_heads_and_leaves_the_rest_to_the_kernel(monkeypatch):
    import torch
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", trl_utils._ChunkedLogProbFunction)  # undone after
    chunked = trl_utils._ChunkedLogProbFunction
    assert fast_sft.install_dense_small_head()
    assert fast_sft.install_dense_small_head()  # a second install keeps the one wrapper
    head = trl_utils._ChunkedLogProbFunction
    assert head.chunked is chunked
    calls = []
    monkeypatch.setattr(fast_sft, "dense_logprobs", lambda *a: calls.append("dense"))
    monkeypatch.setattr(head, "chunked", type("Spy", (), {"apply": staticmethod(lambda *a: calls.append("chunked"))}))
    hidden, weight, targets = torch.zeros(4, 8), torch.zeros(100, 8), torch.zeros(4, dtype=torch.long)
    head.apply(hidden, weight, None, targets, 1.0, 64)
    head.apply(hidden.bfloat16(), weight.bfloat16(), None, targets, 1.0, 64)  # bfloat16: the kernel's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head.apply(hidden, weight, None, targets, 1.0, 64)
    monkeypatch.setattr(fast_sft, "DENSE_HEAD_BYTES", 4 * 100 * 4 - 1)  # [4, 100] float32 logits: one byte too many
    head.apply(hidden, weight, None, targets, 1.0, 64)
    assert calls == ["dense", "chunked", "chunked", "chunked"]


def test_an_unexpected_trl_keeps_the_chunked_head_with_a_warning(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.delattr(trl_utils, "_ChunkedLogProbFunction")
    with pytest.warns(UserWarning, match="TRL's chunked kernel"):
        assert not fast_sft.install_dense_small_head()


def _logged_losses(run_dir: Path) -> list[float]:
    last = TrainingRun.load(run_dir).complete_checkpoints() or sorted(run_dir.glob("checkpoint-*"))
    state = json.loads((last[-1] / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.parametrize("recipe", ["lora", "full"])
def test_losses_equal_plain_trl_sft(tiny_llama, tmp_path, recipe):
    """The same resolved config through plain `trl sft` and through the launcher iclvsft-train runs."""
    prep = tmp_path / "prep"
    flags = ["--logging_steps", "1", "--learning_rate", "1e-3"]
    proc = _train(_args(tiny_llama, prep, *flags, "--dry-run", samples=40, recipe=recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = {}
    for name, head in (("plain", [str(BIN / "trl"), "sft"]), ("compact", launch.TRL_COMMAND)):
        out = tmp_path / name
        cmd = [*head, "--config", str(prep / launch.RESOLVED), "--output_dir", str(out), *flags]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
        assert run.returncode == 0, run.stderr[-2000:]
        losses[name] = _logged_losses(out)
    assert len(losses["plain"]) == 10
    assert losses["compact"] == pytest.approx(losses["plain"], rel=1e-4)


# --- the one-process shortcut ----------------------------------------------------------------------------

#: Whether the installed accelerate's launch code is the one the shortcut was checked against. With any
#: other (a new release), iclvsft-train takes the full launcher: the tests of the shortcut itself skip.
SHORTCUT = fast_sft.accelerate_source_hash() in fast_sft.KNOWN_ACCELERATE_SOURCES
needs_shortcut = pytest.mark.skipif(not SHORTCUT, reason="another accelerate: iclvsft-train uses its full launcher")


def _config(tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """A resolved-config stand-in: what TRL's parser needs, optionally with an ``env`` block."""
    path = tmp_path / "resolved.yaml"
    body = {"model_name_or_path": "m", "dataset_name": "d", "output_dir": str(tmp_path / "out"), "bf16": False}
    path.write_text(json.dumps({**body, **({"env": env} if env else {})}))  # JSON is YAML
    return ["--config", str(path)]


def _what_accelerate_runs(argv: list[str], monkeypatch) -> object:
    """What accelerate's own ``launch_command`` does with ``trl sft argv``: the simple launcher's (cmd,
    env), or the name of the other launcher it picks; this process's environment restored after."""
    from accelerate.commands import launch as accelerate_launch

    seen: dict[str, object] = {}
    monkeypatch.setattr(
        accelerate_launch, "_run_subprocess", lambda cmd, env, quiet: seen.update(run=(list(cmd), dict(env)))
    )
    for name in ("deepspeed_launcher", "multi_gpu_launcher", "tpu_launcher", "tpu_pod_launcher", "sagemaker_launcher"):
        monkeypatch.setattr(accelerate_launch, name, lambda *args, _name=name: seen.update(other=_name))
    with fast_sft.restored_environ():
        accelerate_launch.launch_command(fast_sft._accelerate_launch_args(argv))
    return seen.get("other") or seen["run"]


def _one_process_config(tmp_path: Path) -> list[str]:
    path = tmp_path / "accelerate.yaml"
    path.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\n")
    return ["--config_file", str(path)]


@needs_shortcut
@pytest.mark.parametrize(
    "case",
    ["default", "one process", "--cpu", "mixed precision no", "yaml env", "accelerate config file", "threads"],
)
def test_the_shortcut_starts_the_worker_as_accelerate_would(tmp_path, monkeypatch, case):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    extra = {
        "default": [],
        "one process": ["--num_processes", "1"],
        "--cpu": ["--cpu"],
        "mixed precision no": ["--mixed_precision", "no"],
        "yaml env": [],
        "accelerate config file": _one_process_config(tmp_path),
        "threads": ["--num_cpu_threads_per_process", "2"],
    }[case]
    argv = [*_config(tmp_path, {"OMP_NUM_THREADS": "3", "ICLVSFT_YAML_ENV": "on"} if case == "yaml env" else None)]
    argv += extra
    before = dict(os.environ)
    ours = fast_sft.simple_launch(argv)
    assert dict(os.environ) == before  # the YAML env went to the worker only
    assert ours is not None
    cmd, env = ours
    assert cmd[1:3] == ["-m", fast_sft.MODULE] and cmd[3:5] == argv[:2]
    their_cmd, their_env = _what_accelerate_runs(argv, monkeypatch)
    # torch writes its compile cache's default folder into os.environ the first time a process looks it
    # up (here: whichever of the two parses came first); every worker derives the same default itself
    lazy = {"TORCHINDUCTOR_CACHE_DIR"}
    assert cmd == their_cmd
    assert {k: v for k, v in env.items() if k not in lazy} == {k: v for k, v in their_env.items() if k not in lazy}
    if case == "yaml env":
        assert env["ICLVSFT_YAML_ENV"] == "on" and env["OMP_NUM_THREADS"] == "3"


@needs_shortcut
@pytest.mark.parametrize(
    ("extra", "launcher"),
    [
        (["--multi_gpu", "--num_processes", "2"], "multi_gpu_launcher"),
        (["--use_deepspeed"], "deepspeed_launcher"),
        (["--use_fsdp"], "multi_gpu_launcher"),
        (["--accelerate_config", "fsdp2"], "multi_gpu_launcher"),
    ],
)
def test_distributed_launches_keep_the_full_launcher(tmp_path, monkeypatch, extra, launcher):
    argv = [*_config(tmp_path), *extra]
    assert _what_accelerate_runs(argv, monkeypatch) == launcher
    assert fast_sft.simple_launch(argv) is None


@needs_shortcut
def test_mpirun_flags_and_rejected_flags_keep_the_full_launcher(tmp_path, monkeypatch, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost\n")
    from accelerate.commands.launch import _validate_launch_command

    argv = [*_config(tmp_path), "--mpirun_hostfile", str(hosts)]
    # accelerate's simple launcher would run mpirun (not our worker): the one simple case we leave to it
    args, defaults, _ = _validate_launch_command(fast_sft._accelerate_launch_args(argv))
    assert args.mpirun_hostfile and not fast_sft._is_simple(args, defaults)
    args.mpirun_hostfile = None
    assert fast_sft._is_simple(args, defaults)
    assert fast_sft.simple_launch(argv) is None
    # a flag accelerate rejects: the full launcher runs and says so, nothing is printed twice
    assert fast_sft.simple_launch([*_config(tmp_path), "--multi_gpu", "--num_processes", "1"]) is None
    assert fast_sft.simple_launch([*_config(tmp_path), "--num_processes", "many"]) is None
    assert capsys.readouterr().err == ""


def test_another_accelerate_keeps_the_full_launcher(tmp_path, monkeypatch):
    argv = _config(tmp_path)
    assert (fast_sft.simple_launch(argv) is not None) == SHORTCUT
    monkeypatch.setattr(fast_sft, "KNOWN_ACCELERATE_SOURCES", frozenset())
    assert fast_sft.simple_launch(argv) is None


def test_the_thin_launcher_passes_the_workers_exit_status_as_accelerate_does(tmp_path):
    def run(code: int) -> int:
        worker = [sys.executable, "-c", f"import sys; sys.exit({code})"]
        return subprocess.run([*launch.EXEC_COMMAND, *worker], timeout=60, env=_env()).returncode

    assert (run(0), run(3)) == (0, 1)


# --- --dry-run -----------------------------------------------------------------------------------------------


def test_dry_run_prints_a_trl_sft_command_a_shell_runs(tiny_llama, tmp_path):
    out = tmp_path / "it's a dir"  # a quote and a space: the line must still paste into a shell
    proc = _train(_args(tiny_llama, out, "--dry-run", "--lora_target_modules", "q_proj", "v_proj"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:2] == ["trl", "sft"]
    assert argv[2:] == launch.trl_command(out, ["--lora_target_modules", "q_proj", "v_proj"])[len(launch.TRL_COMMAND) :]
    assert "completion tokens only" in proc.stderr
    # the shell runs it (with --help, which parses the same command line without training)
    shell = subprocess.run(
        ["bash", "-c", f"PATH={BIN}:$PATH {line} --help"], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert "usage: trl sft" in shell.stdout


def test_the_probe_config_is_a_private_temporary_file(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    trap = tmp_path / f".iclvsft-train-probe-{os.getpid()}.yaml"  # the old predictable name, as a symlink
    victim = tmp_path / "victim"
    victim.write_text("keep")
    trap.symlink_to(victim)
    seen = []
    parse = launch.parse_trl

    def spy(path, passthrough):
        seen.append((path, oct(path.stat().st_mode & 0o777), path.is_symlink()))
        return parse(path, passthrough)

    monkeypatch.setattr(launch, "parse_trl", spy)
    launch.prepare(
        launch.TrainOptions(task="parity_pattern", samples=8, model=str(tiny_llama), output_dir=tmp_path / "run")
    )
    assert victim.read_text() == "keep"
    ((path, mode, link),) = seen
    assert path.parent == tmp_path and mode == "0o600" and not link and not path.exists()


# --- one live run per folder ----------------------------------------------------------------------------------


def test_a_second_run_on_a_live_folder_is_refused_in_one_line(tiny_llama, tmp_path):
    out = tmp_path / "run"
    with runlock.hold(out):  # as a live iclvsft-train (or one of its workers) holds it
        proc = _train(_args(tiny_llama, out))
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            f"iclvsft-train: error: --output_dir {out} is in use by another live iclvsft-train run; "
            "wait for it to end, or choose another directory"
        )
        assert os.listdir(out) == [runlock.LOCK_FILE]  # nothing written
    assert not out.exists()  # the lock's own folder goes with it when nothing else was written
    with runlock.hold(out):
        with runlock.hold(out):  # nested holds in one process share the lock
            pass
        with runlock.share(out):  # a worker's shared lock next to iclvsft-train's, once it shares
            pass


def test_a_failed_check_leaves_an_existing_empty_folder_as_it_was(tiny_llama, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    proc = _train(_args(tiny_llama, out, samples=15))
    assert proc.returncode == 2 and "whole batches" in proc.stderr
    assert os.listdir(out) == []


# --- lifetime -----------------------------------------------------------------------------------------------


def _run_processes(marker: str) -> list[int]:
    """Live processes whose command line or environment names ``marker`` (the run's output dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker.encode() in cmdline or marker.encode() in environ):
            found.append(int(pid))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_killing_iclvsft_train_leaves_no_process_of_the_run(tiny_llama, tmp_path, how):
    out = tmp_path / "run"
    marker = f"iclvsft-kill-test-{os.getpid()}-{how}"
    process = subprocess.Popen(
        [str(BIN / "iclvsft-train"), *_args(tiny_llama, out, samples=2000, recipe="full")],
        env=_env(ICLVSFT_TEST_MARKER=marker),  # inherited by every process of the run
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("checkpoint-*")):  # the trainer is training
            assert process.poll() is None
            time.sleep(0.1)
        assert list(out.glob("checkpoint-*")), "training never started"
        assert len(_run_processes(marker)) >= 3  # iclvsft-train, the launcher, the training worker
        role = fast_sft.EXEC if SHORTCUT else fast_sft.LAUNCH  # one-process CPU run: the thin launcher
        launchers = [pid for pid in _run_processes(marker) if _cmdline(pid)[2:4] == [fast_sft.MODULE, role]]
        assert len(launchers) == 1
        process.send_signal(getattr(signal, how))
        process.wait(timeout=60)
        lock = out / runlock.LOCK_FILE
        deadline = time.time() + 10  # a dying process drops its memory (environ) before its files (the lock)
        while time.time() < deadline and (_run_processes(marker) or _lock_holders(lock)):
            time.sleep(0.1)
        assert _run_processes(marker) == []
        assert _lock_holders(lock) == []
    finally:
        for pid in _run_processes(marker):
            os.kill(pid, signal.SIGKILL)
        process.kill()
    if how == "SIGTERM":
        assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    with runlock.hold(out):  # the lock died with the run: the folder is free again
        pass


def _lock_holders(path: Path) -> list[str]:
    inode = f":{path.stat().st_ino} "
    out = []
    for line in Path("/proc/locks").read_text().splitlines():
        if inode in line:
            pid = line.split()[4]
            try:
                info = Path(f"/proc/{pid}/status").read_text().splitlines()[:8]
                info += [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
            except OSError:
                info = ["gone"]
            out.append(line + " " + " | ".join(info))
    return out


# --- the end of training ------------------------------------------------------------------------------------


def _hung_trainer(done: Path, marker: str) -> list[str]:
    """A stand-in for the fast_sft launcher whose trainer writes its done file and then never exits."""
    code = (
        "import os, pathlib, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        "pathlib.Path(os.environ[sys.argv[1]]).write_text('{}')\n"
        "time.sleep(3600)\n"
    )
    return [sys.executable, "-c", code, fast_sft.DONE_ENV, marker]


def test_supervise_stops_a_trainer_hung_after_its_done_file_and_reports_success(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "SHUTDOWN_GRACE_S", 1.0)
    done = tmp_path / "done"
    marker = f"iclvsft-supervise-test-{os.getpid()}"
    monkeypatch.setenv("ICLVSFT_TEST_MARKER", marker)  # inherited by every process of the group
    started = time.monotonic()
    assert launch.supervise(_hung_trainer(done, marker), done) == 0
    assert time.monotonic() - started < 60  # not the trainer's hour
    assert done.is_file()
    assert capsys.readouterr().err.strip().endswith("hung at shutdown; stopped it after 1 s")
    assert _run_processes(marker) == []  # the stand-in and its child: the whole group
    # without a done file, the same hang would be waited for: a trainer that exits non-zero fails
    assert launch.supervise([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "never") == 3


def test_a_trainer_that_hangs_after_its_last_save_loses_nothing(tiny_llama, tmp_path):
    """A trainer hung in its shutdown (as gloo's teardown did in CPU DDP) is stopped after the grace
    period; the run completes with every milestone, and nothing of it keeps running."""
    out = tmp_path / "run"
    marker = f"iclvsft-hang-test-{os.getpid()}"
    env = _env(**{fast_sft.HANG_ENV: "1", "ICLVSFT_TEST_MARKER": marker})
    proc = subprocess.run(
        [str(BIN / "iclvsft-train"), *_args(tiny_llama, out, "--milestones", "8,16")],
        capture_output=True,
        text=True,
        timeout=launch.SHUTDOWN_GRACE_S + 400,  # the bound: without the done file this hangs forever
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hung = [line for line in proc.stderr.splitlines() if "hung at shutdown" in line]
    assert len(hung) == 1
    run = TrainingRun.load(out)
    assert run.status.value == "complete" and run.manifest["global_step"] == 4
    for milestone in run.milestones:
        assert (milestone.path / "adapter_model.safetensors").is_file()
    assert not (out / TRAINED_FILE).exists() and not run.checkpoint_folders()
    assert _run_processes(marker) == []


def test_a_run_killed_while_its_trainer_hung_after_training_resumes_without_training(tiny_llama, tmp_path):
    """kill -9 of iclvsft-train after the trainer's done file: --resume only finishes the folder."""
    out = tmp_path / "run"
    args = _args(tiny_llama, out, "--milestones", "8,16")
    marker = f"iclvsft-hang-kill-test-{os.getpid()}"
    process = subprocess.Popen(
        [str(BIN / "iclvsft-train"), *args],
        env=_env(**{fast_sft.HANG_ENV: "1", "ICLVSFT_TEST_MARKER": marker}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / TRAINED_FILE).is_file():
            assert process.poll() is None
            time.sleep(0.1)
        process.kill()
        process.wait(timeout=60)
        deadline = time.time() + 10
        while time.time() < deadline and _run_processes(marker):
            time.sleep(0.1)
        assert _run_processes(marker) == []
    finally:
        for pid in _run_processes(marker):
            os.kill(pid, signal.SIGKILL)
        process.kill()
    assert TrainingRun.load(out).status.value == "running"
    proc = _train([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Training completed" not in proc.stderr and "finishing the folder" in proc.stderr  # no trainer ran
    run = TrainingRun.load(out)
    assert run.status.value == "complete" and run.manifest["samples_seen"] == 16
    assert [m.samples for m in run.milestones if m.path and m.path.is_dir()] == [8, 16]


def test_resuming_a_ddp_run_without_its_flags_says_what_to_pass(tiny_llama, tmp_path):
    out = tmp_path / "run"
    ddp = ["--multi_gpu", "--num_processes", "2", "--use_cpu", "true"]
    assert _train(_args(tiny_llama, out, *ddp, "--dry-run")).returncode == 0
    proc = _train(_args(tiny_llama, out, "--resume"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "iclvsft-train: error: --resume needs the trl sft and accelerate flags of the interrupted run: "
        "pass exactly `--multi_gpu --num_processes 2 --use_cpu true` besides the iclvsft-train options"
    )
