# Set-up is part of every target: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install chromium demo docs test test-fast lint bench faults sd-check table2 figures \
  figures-toy figures-sae retrain-toy check-toy-card retrain-classifier clean editbench \
  editbench-depth editbench-steps washout

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk. An unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,app]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hsae demo --out runs/demo

.PHONY: serve serve-screenshot
# The feature explorer of the demo's run (make demo first), on http://127.0.0.1:8765/.
serve: $(STAMP)
	$(VENV)/bin/hsae serve runs/demo

# The README's screenshot of the explorer's edit page: the browser test, on the demo's run.
serve-screenshot: $(STAMP) chromium
	HSAE_SERVE_RUN=runs/demo HSAE_SERVE_SCREENSHOT=docs/img/serve-edit.png \
	  $(VENV)/bin/pytest -q tests/serve/test_browser.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks
	$(VENV)/bin/mypy

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

# The quick loop while developing: everything but the tests marked slow (the suite runs them all).
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_stream.py

# SD 2.1-base's real U-Net and VAE with random weights on the CPU, through every CLI stage
# (docs/gpu.md: its stage times and memory peaks). SD_CHECK_ARGS="--tiny" runs toy-sized parts.
sd-check: $(STAMP)
	$(PY) benchmarks/sd_check.py --out runs/sd-check $(SD_CHECK_ARGS)

# Kill campaign (docs/reliability.md): extract, train and editbench each SIGKILLed at 20 seeded
# instants and resumed, compared byte for byte with an uninterrupted run; disk-full runs need root
# (a small tmpfs is mounted). Tiny sizes: about an hour on one busy core, minutes when idle.
faults: $(STAMP)
	$(PY) benchmarks/fault_campaign.py --kills 20 --disk-full 3 --work runs/faults \
	  --json runs/faults/campaign.json

# The shifted-nuisance faces: made by figures-toy (classifier OOD) or table2, whichever runs first.
SHIFTED := data/toyfaces-shifted
N_OOD := 384
# The committed toy model, and the sample check that is its card (figures-toy re-runs it into runs/).
TOY := src/hsae/assets/toy-ddpm
TOY_CHECK := --data data/toyfaces --n 1000 --batch 250 --eta 1 --render-judge

# Paper Table 2 on the toy model (docs/results.md, "Reconstruction"): ~1 h on 2 cores, resumable.
table2: $(STAMP)
	test -d data/toyfaces || $(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(VENV)/bin/hsae table2 --data data/toyfaces --ood-data $(SHIFTED) --n-ood $(N_OOD) \
	  --out runs/table2

# Every model-dependent figure of docs/results.md, in its order, after a change of the toy model
# or data (~3 h on 2 cores). Each command is the one docs/results.md names; stores made with
# other weights are refused with a message naming them (delete and re-run), and Table 2 resumes
# where it stopped. Outputs: runs/figures/ and the folders docs/results.md names; nothing is
# written into the package (the model's own card is `make check-toy-card`).
# figures-toy (~35 min idle): the model, classifier, round trip, extraction benchmark and demo;
# figures-sae (~2 h): Table 2, the larger probes and edit benchmark.
BENCH := data/toyfaces-bench
K1 := runs/editbench-1k
figures: figures-toy figures-sae

figures-toy: $(STAMP)
	test -d data/toyfaces || $(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	mkdir -p runs/figures
	$(VENV)/bin/hsae roundtrip --data data/toyfaces --model toy --n 32 --steps 10 25 50 100 \
	  --split test --json runs/figures/roundtrip.json
	$(VENV)/bin/hsae toy robustness --data data/toyfaces --n 2000 \
	  > runs/figures/classifier-robustness.md
	test -d $(SHIFTED) || $(VENV)/bin/hsae data toyfaces --shifted --n $(N_OOD) --out $(SHIFTED)
	$(VENV)/bin/hsae toy robustness --data $(SHIFTED) --split all \
	  > runs/figures/classifier-ood.md
	$(VENV)/bin/hsae toy check $(TOY_CHECK) --out runs/figures/toy-check
	for a in Eyes_Closed Smiling; do $(VENV)/bin/hsae toy survival --data data/toyfaces \
	  --attribute $$a --n 100 --t 0.1 0.3 0.5 0.7 1.0 --by Pale_Skin \
	  --json runs/figures/survival-$$a.json; done
	$(VENV)/bin/hsae toy render-judge --validate 1000 --json runs/figures/render-judge.json
	$(VENV)/bin/hsae toy render-judge --validate 1000 --blur 0.7 \
	  --json runs/figures/render-judge-blur.json
	$(VENV)/bin/hsae demo --out runs/demo
	$(PY) benchmarks/bench_extract.py --n 32 --batch 16 --steps 50 --repeats 3 \
	  --json runs/figures/bench-extract.json

figures-sae: table2
	mkdir -p runs/figures
	test -d $(BENCH) || $(VENV)/bin/hsae data toyfaces --n 1000 --seed 7 --out $(BENCH)
	$(VENV)/bin/hsae extract --data $(BENCH) --out $(K1)/acts
	$(VENV)/bin/hsae probe --store $(K1)/acts --sae runs/table2/sae/ca-l1-0.1 \
	  --flat-sae runs/table2/sae/flat --out $(K1)/probe

# The edit benchmark at full size (docs/editing.md): 5,000 toyfaces (500 test images, each add and
# remove group capped at 100 so its Wilson interval is <= ±10 points), six SAEs (three layouts, on
# h_t and on the whole window), windows 1, half and all. About 35 minutes on 2 idle cores; every
# stage resumes after a kill (re-run the target). Stage times: runs/editbench/stages.log.
EB := runs/editbench
EB_DATA := data/toyfaces-5k
editbench: $(STAMP)
	bash benchmarks/editbench_full.sh $(EB) $(EB_DATA)

# The inversion depth on the same axis (docs/editing.md): the three layouts at t = 0.9, no window
# SAEs. About 25 minutes on 2 idle cores.
editbench-depth: $(STAMP)
	T=0.9 WINDOW_SAES=0 bash benchmarks/editbench_full.sh $(EB)-t0.9 $(EB_DATA)

# Does the benchmark's 10-step grid tell the 50-step story? (docs/editing.md) The flat SAE and the
# baselines on two attributes, groups of 50, at 10 and at 50 DDIM steps (needs make editbench).
editbench-steps: $(STAMP)
	for s in 10 50; do $(VENV)/bin/hsae editbench --store $(EB)/acts --data $(EB_DATA) \
	  --sae flat=$(EB)/sae/flat --attributes Eyeglasses Smiling --n-test 500 --n-val 100 \
	  --max-group 50 --windows all --test-sizes validated --components none --candidates 4 \
	  --steps $$s --out $(EB)-steps/steps-$$s --no-progress || exit 1; done

# Why one step of h does not steer the toy model (docs/editing.md): washout and GroupNorm.
washout: $(STAMP)
	test -d $(EB_DATA) || $(VENV)/bin/hsae data toyfaces --n 5000 --seed 11 --out $(EB_DATA)
	$(PY) scripts/washout.py --data $(EB_DATA) --n 64 --json $(EB)/washout.json

# The embedded toy model and classifier: the exact commands that produced the committed weights.
# retrain-toy (~100 min on 2 idle cores, resumable: re-run it after a stop) ends with
# check-toy-card, which judges the new weights (~25 min) and writes the model's card next to them:
# src/hsae/assets/toy-ddpm/sample_check.json + samples.png. tests/test_toy_check.py fails until
# the card's weights fingerprint is that of the committed weights and its check passed.
retrain-toy: $(STAMP)
	$(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(VENV)/bin/hsae toy train-ddpm --data data/toyfaces --out $(TOY) \
	  --steps 3500 --prediction-type v_prediction
	$(MAKE) check-toy-card

check-toy-card: $(STAMP)
	test -d data/toyfaces || $(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(VENV)/bin/hsae toy check $(TOY_CHECK) --out $(TOY)

retrain-classifier: $(STAMP)
	$(VENV)/bin/hsae data toyfaces --n 20000 --out data/toyfaces
	$(VENV)/bin/hsae toy train-classifier --data data/toyfaces --out src/hsae/assets/toy-classifier

# docs/cli.md is generated from the parsers (tests/cli/test_cli_docs.py fails when it is stale).
docs: $(STAMP)
	$(PY) scripts/gen_cli_docs.py

clean:
	rm -rf runs .pytest_cache .ruff_cache

# The GPU check (docs/gpu.md): SD 2.1-sized extraction (float16) and SAE training against their
# peers on one GPU, one JSON in runs/gpu-check.json, <= 5 minutes on one H100-class GPU.
# `make gpu-check GPU_CHECK_ARGS="--device cpu --tiny"` runs the same code at toy sizes here.
.PHONY: gpu-check
gpu-check: $(STAMP)
	PYTHON=$(PY) benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)
