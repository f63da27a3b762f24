"""User-given names never become paths outside the package or the output folder."""

from __future__ import annotations

import pytest

from iclvsft.compare.config import Experiment
from iclvsft_tasks.errors import IclvsftError
from iclvsft_train import launch


@pytest.mark.parametrize("recipe", ["../../x", "/etc/passwd", "lora/../full", "recipes/lora", ""])
def test_a_recipe_is_a_name_never_a_path(tmp_path, recipe):
    (tmp_path / "x.yaml").write_text("learning_rate: 1.0\n")
    with pytest.raises(IclvsftError, match="unknown recipe"):
        launch.load_recipe(recipe)
    with pytest.raises(IclvsftError, match="recipe"):
        Experiment(recipe=recipe)


def test_shipped_recipes_load():
    for name in launch.recipe_names():
        assert isinstance(launch.load_recipe(name), dict)
        assert Experiment(recipe=name).recipe == name
