# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Never let the repo root shadow an import (operator/ vs the standard library's operator).
export PYTHONSAFEPATH := 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GOTOOLCHAIN := local
STAMP = $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: demo test lint unit install testbins dev-cluster crds clean chaos bench-recovery bench-scale

$(STAMP): pyproject.toml
	@echo "==> installing forgeline[dev] into $(VENV) (first time: about 3-6 minutes, torch is ~2.5 GB with its CUDA libraries)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgeline run examples/pipeline.yaml --workdir .forgeline

testbins:
	tests/cluster/kube/build.sh
	tests/cluster/kueue/build.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy api operator local cli jobs components
	$(VENV)/bin/lint-imports

crds: $(STAMP)
	$(VENV)/bin/forgeline crds

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

test: $(STAMP) lint
	FORGELINE_TESTBIN_DIR=$$(tests/cluster/kube/build.sh) FORGELINE_KUEUE_DIR=$$(tests/cluster/kueue/build.sh) \
		$(VENV)/bin/pytest -q --durations=15 tests

# The full fault campaign (the quick one is part of `make test`); FORGELINE_CHAOS_SEED=N replays one.
chaos: $(STAMP)
	FORGELINE_TESTBIN_DIR=$$(tests/cluster/kube/build.sh) FORGELINE_CHAOS_CAMPAIGN=full \
		$(VENV)/bin/pytest -q -s tests/chaos/test_campaign.py

bench-recovery: $(STAMP)
	FORGELINE_TESTBIN_DIR=$$(tests/cluster/kube/build.sh) $(PY) bench/recovery.py

bench-scale: $(STAMP)
	FORGELINE_TESTBIN_DIR=$$(tests/cluster/kube/build.sh) $(PY) bench/scale.py

dev-cluster: $(STAMP)
	FORGELINE_TESTBIN_DIR=$$(tests/cluster/kube/build.sh) PYTHONPATH=tests $(PY) -m testbed.launcher

clean:
	rm -rf .forgeline .pytest_cache .mypy_cache .ruff_cache
