# `make demo`: run the smoke sweep on the embedded digits data and print its table.
# `make test`: the whole pytest suite (unit + end-to-end with real Ray; slow tests included).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STORAGE ?= ./ddsweep-runs
STAMP   := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch/torchvision are pinned explicitly first: on this project's machines they install from local disk.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[test]'  # no setuptools banner about editable installs
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ddsweep run sweeps/smoke.yaml --storage $(STORAGE)
	@echo
	@echo "Parquet rows: $(STORAGE)/smoke/results/ (one file per trial)"
	$(BIN)/ddsweep report sweeps/smoke.yaml --storage $(STORAGE)

# Lint and format check first: one style across files (configuration in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(STORAGE)
