"""Package discovery, the one thing pyproject.toml cannot say: two folders install under other names
(``train/`` as ``iclvsft_train``, ``task_configs/`` as ``iclvsft_tasks.task_configs``), and every data
folder (a task's YAMLs, recipes, shipped experiments) is listed as a package so that setuptools
installs it without "Package would be ignored" warnings. Everything else is in pyproject.toml."""

import warnings

from setuptools import find_namespace_packages, setup

# An editable install of remapped folders goes through setuptools' import finder, which then prints
# an "Editable installation" notice that folders in the working directory named like a package may
# shadow it. Ours are those packages themselves, so the notice says nothing here.
warnings.filterwarnings("ignore", message="Editable installation")


def packages(name: str, folder: str) -> list[str]:
    """``name`` and every folder below ``folder`` that holds code or data, under ``name``."""
    below = find_namespace_packages(folder, exclude=["*__pycache__*"])
    return [name, *(f"{name}.{sub}" for sub in below)]


setup(
    packages=[
        *packages("iclvsft", "iclvsft"),
        *packages("iclvsft_tasks", "iclvsft_tasks"),
        *packages("iclvsft_tasks.task_configs", "task_configs"),
        *packages("iclvsft_train", "train"),
    ],
    package_dir={"iclvsft_tasks.task_configs": "task_configs", "iclvsft_train": "train"},
)
