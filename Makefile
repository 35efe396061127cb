# Two entry points: `make run` (the main job on the embedded default, CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ffstudy-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.py))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONWARNINGS := ignore::FutureWarning

.PHONY: install run test notebooks book chromium demo clean

# torch==2.13.0 goes in first and alone: that exact pin picks the local CPU wheel, anything else pulls GBs of CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,notebooks,book]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

install: $(STAMP)

# Debian's Chromium renders the website in the book test (headless).
chromium:
	command -v chromium > /dev/null || (apt-get update -qq && apt-get install -y -qq chromium > /dev/null)

# Execute every chapter on SpriteWorld (CPU) and store its outputs in the paired .ipynb.
notebooks: install
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
		echo "executing $$nb"; ../$(BIN)/jupytext --to ipynb --set-kernel python3 --execute $$nb || exit 1; done

# The website from the stored notebook outputs (nothing re-executed), offline.
book: install
	rm -rf book/notebooks && mkdir -p book/notebooks && cp notebooks/[0-9]*.ipynb book/notebooks/
	$(BIN)/jupyter-book build book

run: notebooks book
	@echo "The course website is built: open file://$(CURDIR)/book/_build/html/index.html"

demo: install
	$(BIN)/ffstudy demo --out outputs/demo

# The notebooks run twice: the stored outputs must not depend on the CPU that checks them, so the second run uses
# MKL's, oneDNN's and ATen's most portable code paths (a different rounding order than this machine's defaults).
test: install chromium
	$(BIN)/python -m pytest
	MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest notebooks -q

clean:
	rm -rf outputs .pytest_cache book/_build book/notebooks
