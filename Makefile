# Quick start:  make demo   (set up .venv, train on the embedded digits, write outputs/)
#               make test   (set up .venv, ruff, the test suite, the docs with -W)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint docs bench clean gpu-prep

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata or the pins change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,mnist,text,diffusers]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/conprediff demo --out outputs

lint: $(STAMP)
	$(BIN)/ruff check .

docs: $(STAMP)
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html

test: $(STAMP) lint
	$(BIN)/python -m pytest -q
	$(MAKE) docs

# Before a GPU call: the wheels the GPU image lacks into .gpu/, and the MNIST plateau run's folder
# (protocol, feature classifier, noise floor); see benchmarks/gpu_plateau.sh.
gpu-prep: $(STAMP)
	bash benchmarks/gpu_plateau.sh --prepare

clean:
	rm -rf docs/_build outputs .pytest_cache .ruff_cache
