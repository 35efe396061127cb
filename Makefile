# Two entry points: `make run` (the main job on the embedded default, CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ffstudy-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONWARNINGS := ignore::FutureWarning

.PHONY: install run test clean

# torch==2.13.0 goes in first and alone: that exact pin picks the local CPU wheel, anything else pulls GBs of CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,notebooks]"
	touch $@

install: $(STAMP)

run: install
	$(BIN)/ffstudy demo --out outputs/demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf outputs .pytest_cache
