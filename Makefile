# Set-up is part of every target: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench retrain-toy retrain-classifier clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk. An unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hsae demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks

test: lint
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py

# The embedded toy model and classifier: the exact commands that produced the committed weights.
retrain-toy: $(STAMP)
	$(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(PY) scripts/train_toy_ddpm.py --data data/toyfaces --out src/hsae/assets/toy-ddpm --steps 2600

retrain-classifier: $(STAMP)
	$(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(PY) scripts/train_classifier.py --data data/toyfaces --out src/hsae/assets/toy-classifier

clean:
	rm -rf runs .pytest_cache .ruff_cache
