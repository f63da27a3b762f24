"""DataSpec: the seed and split sizes, checked once where built and passed whole to every config;
its SplitSpec and lm-eval metadata are exactly what the flat settings gave before."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import SMALL_METADATA

import iclvsft_tasks
from iclvsft.circuits.run import CircuitsConfig, settings_of
from iclvsft.compare.config import Experiment, load_experiment
from iclvsft_tasks import lm_eval_glue
from iclvsft_tasks.cliutil import add_split_size_flags, data_from_flags, non_negative_int, positive_int
from iclvsft_tasks.data.spec import DEFAULT_SIZES, MAX_SPLIT_SIZE, SPLITS, DataSpec
from iclvsft_tasks.data.splits import SplitSpec, fingerprints
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.parity import ParityConfig
from iclvsft_train import cli as train_cli
from iclvsft_train.data import DataOptions

SMALL = DataSpec(seed=2, test_size=7, test_broken_size=3, validation_size=5, train_size=50)


def test_defaults_are_the_default_sizes():
    assert DataSpec().sizes == DEFAULT_SIZES and DataSpec().seed == 0
    assert list(SMALL.sizes) == list(SPLITS)
    assert json.dumps(SMALL.sizes) == '{"test": 7, "test_broken": 3, "validation": 5, "train": 50}'


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=True), "seed must be an integer"),
        (dict(seed="1"), "seed must be an integer"),
        (dict(seed=1.0), "seed must be an integer"),
        (dict(test_size=False), "test size must be an integer"),
        (dict(validation_size=2.0), "validation size must be an integer"),
        (dict(train_size="10"), "train size must be an integer"),
        (dict(test_broken_size=-1), "test_broken size must be between 0 and"),
        (dict(train_size=MAX_SPLIT_SIZE + 1), "train size must be between 0 and"),
    ],
)
def test_bad_seeds_and_sizes_are_refused_where_built(kwargs, message):
    with pytest.raises(IclvsftError, match=message):
        DataSpec(**kwargs)


def test_empty_and_largest_splits_are_legal():
    assert DataSpec(test_size=0, train_size=MAX_SPLIT_SIZE).size("test") == 0


def test_from_sizes_keeps_defaults_and_refuses_unknown_splits():
    assert DataSpec.from_sizes({"train": 9, "test": None}, seed=4) == DataSpec(seed=4, train_size=9)
    with pytest.raises(IclvsftError, match="unknown split dev"):
        DataSpec.from_sizes({"dev": 3})
    with pytest.raises(IclvsftError, match="unknown split"):
        SMALL.size("dev")


def test_metadata_round_trip():
    metadata = SMALL.to_metadata()
    assert metadata == {
        "iclvsft_seed": 2,
        "iclvsft_test_size": 7,
        "iclvsft_test_broken_size": 3,
        "iclvsft_validation_size": 5,
        "iclvsft_train_size": 50,
    }
    assert DataSpec.from_metadata(metadata) == SMALL
    # lm-eval hands over strings from --metadata and model args; other keys are not ours
    loose = {"iclvsft_seed": "2", "iclvsft_test_size": 7.0, "seed": 99, "pretrained": "x"}
    assert DataSpec.from_metadata(loose) == DataSpec(seed=2, test_size=7)
    with pytest.raises(IclvsftError, match="iclvsft_train_size must be an integer"):
        DataSpec.from_metadata({"iclvsft_train_size": "many"})
    with pytest.raises(IclvsftError, match="test size must be between"):
        DataSpec.from_metadata({"iclvsft_test_size": -3})


@pytest.mark.parametrize("task", ["parity_pattern", "expression_pattern"])
def test_the_split_spec_it_builds_is_the_flat_one(task):
    spec = SMALL.split_spec(task)
    flat = SplitSpec(task, seed=2, test_size=7, test_broken_size=3, validation_size=5, train_size=50)
    assert spec == flat and hash(spec) == hash(flat) and spec.data == SMALL
    assert fingerprints(spec) == fingerprints(flat)
    assert DataSpec().split_spec(task) == SplitSpec(task)
    tiny = ParityConfig(count=(3, 3), value=(10, 15))
    assert SMALL.split_spec("parity_pattern", tiny).config is tiny


def test_lm_eval_metadata_reads_and_writes_the_spec():
    assert lm_eval_glue.data_from_metadata(SMALL_METADATA) == DataSpec.from_metadata(SMALL_METADATA)
    with pytest.raises(IclvsftError, match="unknown iclvsft metadata iclvsft_sed"):
        lm_eval_glue.data_from_metadata({"iclvsft_sed": 1})
    # keyword settings give only the keys asked for; a DataSpec gives all of them
    assert lm_eval_glue.metadata_for(test_size=7) == {"iclvsft_test_size": 7}
    assert lm_eval_glue.metadata_for(SMALL, demos="fixed", draw=2) == {
        **SMALL.to_metadata(),
        "iclvsft_demos": "fixed",
        "iclvsft_draw": 2,
    }
    with pytest.raises(IclvsftError, match="not both"):
        lm_eval_glue.metadata_for(SMALL, seed=1)
    with pytest.raises(IclvsftError, match="test size must be between"):
        lm_eval_glue.metadata_for(test_size=-1)
    with pytest.raises(IclvsftError, match="unknown setting 'test_sise'"):
        lm_eval_glue.metadata_for(test_sise=1)


def test_task_manager_takes_a_data_spec_or_the_documented_keywords():
    by_spec = iclvsft_tasks.task_manager(data=SMALL).load(["parity_pattern_0shot"])["tasks"]["parity_pattern_0shot"]
    by_keywords = iclvsft_tasks.task_manager(
        seed=2, test_size=7, test_broken_size=3, validation_size=5, train_size=50
    ).load(["parity_pattern_0shot"])["tasks"]["parity_pattern_0shot"]
    ids = [d["id"] for d in by_spec.test_docs()]
    assert len(ids) == 7 and ids == [d["id"] for d in by_keywords.test_docs()]


def test_experiment_holds_one_data_spec_and_keeps_its_flat_interface(tmp_path):
    exp = Experiment(test_size=5, validation_size=4, train_size=30, seed=3, ft_samples=[], shots=[0])
    assert exp.data == DataSpec(seed=3, test_size=5, test_broken_size=5, validation_size=4, train_size=30)
    shown = exp.to_dict()
    assert "data" not in shown
    assert {k: shown[k] for k in ("seed", "test_size", "test_broken_size", "validation_size", "train_size")} == {
        "seed": 3,
        "test_size": 5,
        "test_broken_size": 5,
        "validation_size": 4,
        "train_size": 30,
    }
    config = tmp_path / "exp.yaml"
    config.write_text("test_size: 6\nseed: 1\nshots: [0]\nft_samples: []\n")
    assert load_experiment(str(config), {"train_size": 40}).data == DataSpec(
        seed=1, test_size=6, test_broken_size=6, validation_size=100, train_size=40
    )
    with pytest.raises(IclvsftError, match="unknown experiment setting"):
        load_experiment(None, {"data": {"seed": 1}})
    with pytest.raises(IclvsftError, match="validation_size must be at least 1, got 0"):
        Experiment(validation_size=0)
    with pytest.raises(IclvsftError, match="seed must be an integer"):
        Experiment(seed="0")


def test_training_options_hold_the_spec(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(train_cli, "run", lambda options: seen.append(options) or 0)
    argv = ["--task", "parity_pattern", "--samples", "8", "--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    assert train_cli.main([*argv, "--data-seed", "3", "--train-size", "60", "--test-size", "0"]) == 0
    assert seen[0].data == DataSpec(seed=3, train_size=60, test_size=0)
    assert train_cli.main(argv) == 0 and seen[1].data == DataSpec()

    options = DataOptions.create("parity_pattern,boolean_pattern", 20, SMALL)
    assert options.data is SMALL and options.spec("boolean_pattern") == SMALL.split_spec("boolean_pattern")
    with pytest.raises(IclvsftError, match="its train split holds 50"):
        DataOptions.create("parity_pattern", 51, SMALL)


def test_the_manifest_records_the_seed_and_sizes_as_before(tiny_llama, tmp_path):
    from iclvsft_train import launch

    data = DataSpec.from_metadata(SMALL_METADATA)
    options = launch.TrainOptions(
        task="parity_pattern", samples=8, model=str(tiny_llama), output_dir=tmp_path / "run", data=data
    )
    manifest = launch.prepare(options)
    assert manifest["data_seed"] == 0
    assert json.dumps(manifest["split_sizes"]) == '{"test": 12, "test_broken": 12, "validation": 10, "train": 200}'
    assert manifest["split_fingerprints"]["parity_pattern"] == fingerprints(data.split_spec("parity_pattern"))


def test_circuits_config_holds_the_spec_and_records_it_flat():
    config = CircuitsConfig(task="parity_pattern", data=SMALL, device="cpu")
    settings = settings_of(config, "/model", None)
    assert settings["seed"] == 2 and settings["sizes"] == SMALL.sizes
    assert CircuitsConfig().data == DataSpec()
    with pytest.raises(IclvsftError, match="data must be a DataSpec"):
        CircuitsConfig(data={"seed": 1})


def test_flag_types_say_what_they_accept():
    assert non_negative_int("0") == 0
    assert positive_int("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match="non-negative integer"):
        non_negative_int("-1")
    parser = argparse.ArgumentParser()
    add_split_size_flags(parser, None, "test")
    args = parser.parse_args(["--validation-size", "0", "--train-size", "70"])
    assert data_from_flags(args, seed=5) == DataSpec(seed=5, validation_size=0, train_size=70)
