"""The one reader of flags in argument lists we pass on unparsed (argparse's answer, for every caller),
and the -v/--verbose switch every command shares."""

from __future__ import annotations

import argparse

import pytest

from iclvsft_tasks import eval_cli
from iclvsft_tasks.cliutil import flag_on, flag_value, slow_half_precision


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--num_fewshot", "3"],
        ["--num_fewshot=3"],
        ["-f", "2"],
        ["-f=2"],
        ["--num_fewshot", "3", "-f", "5"],
        ["-f", "5", "--num_fewshot=3"],
        ["--num_fewshot=1", "--tasks", "x", "--num_fewshot", "4"],
        ["--num_fewshot=a=b"],
    ],
)
def test_flag_value_agrees_with_argparse(argv):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--num_fewshot", "-f")
    parser.add_argument("--tasks")
    assert flag_value(argv, "--num_fewshot", "-f") == parser.parse_args(argv).num_fewshot


def test_flag_value_ignores_lookalikes_and_a_missing_value():
    assert flag_value(["--num_fewshots", "3", "--num_fewshot_x=2"], "--num_fewshot") is None
    assert flag_value(["--num_processes"], "--num_processes") is None
    assert flag_value(["--num_processes", "2", "--num_processes"], "--num_processes") == "2"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--use_peft"],
        ["--use_peft", "true"],
        ["--use_peft", "True"],
        ["--use_peft", "false"],
        ["--use_peft=1"],
        ["--use_peft=no"],
        ["--use-peft", "--lora_r", "8"],
        ["--lora_r", "8", "--use-peft"],
        ["--use_peft", "yes", "--use_peft", "false"],
        ["--use_peft=false", "--use-peft"],
        ["--use_peftx", "true"],
    ],
)
def test_flag_on_agrees_with_trls_parser(argv):
    from transformers import HfArgumentParser
    from trl import ModelConfig

    (parsed,) = HfArgumentParser(ModelConfig).parse_args_into_dataclasses(argv, return_remaining_strings=True)[:1]
    given = flag_on(argv, "--use_peft", "--use-peft")
    assert given is (parsed.use_peft if given is not None else None)
    assert given is not None or parsed.use_peft is False  # absent: TRL's default


def test_slow_half_precision_warns_only_for_half_precision_on_a_cpu_without_native_products(monkeypatch):
    import torch

    from iclvsft_tasks import cliutil

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: True, raising=False)
    said = slow_half_precision("bfloat16", "cpu")
    assert said and "lacks torch's native bfloat16 matrix products" in said and "float32" in said
    assert slow_half_precision("bfloat16", "cpu:0") == said
    assert slow_half_precision("float16", "cpu") is None  # this "CPU" has them
    assert slow_half_precision("bfloat16", "cuda") is None
    assert slow_half_precision("float32", "cpu") is None
    assert slow_half_precision("auto", "cpu") is None
    monkeypatch.setattr(cliutil, "_half_precision_warned", set())
    assert cliutil.slow_half_precision_once("bfloat16", "cpu") == said
    assert cliutil.slow_half_precision_once("bfloat16", "cpu:0") is None  # said once per process
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert slow_half_precision("bfloat16", "cpu") is None


@pytest.mark.parametrize("argv", [["--num_fewshot", "5"], ["--num_fewshot=5"], ["-f", "5"], ["-f=5"]])
def test_eval_cli_reads_a_single_num_fewshot_in_every_spelling(argv):
    warnings = eval_cli.num_fewshot_warnings(["--tasks", "parity_pattern_4shot", *argv])
    assert len(warnings) == 1 and "--num_fewshot 5 given: parity_pattern_4shot runs at 5 shots, not 4" in warnings[0]
    assert eval_cli.num_fewshot_warnings(["--tasks", "parity_pattern_4shot"]) == []


def test_verbose_lasts_one_command_and_unquiets_warnings(monkeypatch, capsys):
    import os
    import warnings

    from iclvsft_tasks.cliutil import OneLineParser, add_verbose_flag, quiet_warnings, run_cli, verbose
    from iclvsft_tasks.errors import IclvsftError

    for name in ("ICLVSFT_VERBOSE", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):
        monkeypatch.delenv(name, raising=False)
    parser = OneLineParser(prog="p")
    parser.add_subparsers().add_parser("sub")
    add_verbose_flag(parser)
    seen = []

    def body(argv):
        parser.parse_args(argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_warnings():
                warnings.warn("library says", UserWarning, stacklevel=1)
        seen.append((verbose(), os.environ.get("TRANSFORMERS_VERBOSITY"), len(caught)))
        raise IclvsftError("do this")

    assert run_cli("p", body, ["sub"]) == 2
    assert capsys.readouterr().err == "p: error: do this\n"
    assert run_cli("p", body, ["sub", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("p: error: do this\n")
    assert seen == [(False, None, 0), (True, "info", 1)]
    assert not verbose() and "TRANSFORMERS_VERBOSITY" not in os.environ
