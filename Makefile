# Set-up is part of every target: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install chromium demo test lint bench table2 retrain-toy retrain-classifier clean

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

# The report test opens the HTML report in headless Chromium (Debian's package); install it when
# missing and we may (root or passwordless sudo), otherwise say why that test will be skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "chromium missing and no root: the browser test of the report will be skipped"; \
	  exit 0; fi; \
	  echo "installing Debian chromium for the report test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    chromium >/dev/null; }

test: lint chromium
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py

# Paper Table 2 on the toy model (README "Reconstruction"): ~1 h on 2 cores, resumable.
table2: $(STAMP)
	test -d data/toyfaces || $(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(PY) scripts/table2.py --data data/toyfaces --ood-data data/toyfaces-shifted --out runs/table2

# The embedded toy model and classifier: the exact commands that produced the committed weights.
retrain-toy: $(STAMP)
	$(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(PY) scripts/train_toy_ddpm.py --data data/toyfaces --out src/hsae/assets/toy-ddpm \
	  --steps 3500 --prediction-type v_prediction

retrain-classifier: $(STAMP)
	$(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(PY) scripts/train_classifier.py --data data/toyfaces --out src/hsae/assets/toy-classifier

clean:
	rm -rf runs .pytest_cache .ruff_cache
