# xaiprune: `make report` runs the study, `make test` runs the tests. `make` alone lists the targets (README.md, docs/).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default
STAMP := $(VENV)/.install-stamp

.DEFAULT_GOAL := help
.PHONY: help install report check smoke test docs lab bench screenshot clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/$$(PROFILE)/<PROFILE>/g' | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=smoke|default|budget|full (report, check, docs, screenshot), PYTHON=$(PYTHON),"
	@echo "             TORCH_INDEX=<pip index of the torch build> (https://download.pytorch.org/whl/cpu off the project's machines)"
	@echo "  one notebook: $(PY) -m xaiprune.study.pipeline --profile $(PROFILE) --from STEM --to STEM"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, alone and pinned. Without TORCH_INDEX pip takes torch 2.13.0 from its configured sources
	# (the CPU build on the project's machines; from PyPI elsewhere, the multi-GB CUDA build). With it, from that
	# index: TORCH_INDEX=https://download.pytorch.org/whl/cpu gives the CPU build anywhere (README, "On a fresh machine").
ifdef TORCH_INDEX
	$(PY) -m pip install --quiet -c constraints.txt --index-url $(TORCH_INDEX) torch==2.13.0 torchvision==0.28.0
else
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
endif
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name xaiprune --display-name "Python (xaiprune)" >/dev/null
	@touch $@

install: $(STAMP)  ## create .venv with the pinned set and register the Jupyter kernel "xaiprune"

report: $(STAMP)  ## run the notebooks with PROFILE (default) and build reports/$(PROFILE)/report.html
	$(PY) -m xaiprune.study.pipeline --profile $(PROFILE)

check: $(STAMP)  ## check PROFILE's parameters, the kernel and the data file; run nothing
	$(PY) -m xaiprune.study.pipeline --check --profile $(PROFILE)

smoke: $(STAMP)  ## the whole chain (01-11) with the small CNN in a few minutes; its numbers are not results
	$(PY) -m xaiprune.study.pipeline --profile smoke

test: $(STAMP)  ## the test suite (the end-to-end test on real data needs MEDMNIST_ROOT or data/medmnist; docs/tests.md)
	$(PY) -m pytest

docs: $(STAMP)  ## docs/results.json and the generated tables of README.md and docs/, from reports/$(PROFILE)/summary.json
	$(PY) -m xaiprune.study.readme --profile $(PROFILE)

lab: $(STAMP)  ## JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP)  ## timing benchmarks, written to benchmarks/results/ (git-ignored: they belong to this machine)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/bench_pruning.py

screenshot:  ## PNG of reports/$(PROFILE)/report.html in headless Chromium (apt-get install chromium)
	@command -v chromium >/dev/null || { echo "chromium is not installed (Debian: apt-get install chromium)"; exit 1; }
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,6200 \
		--screenshot=reports/$(PROFILE)/report.png reports/$(PROFILE)/report.html

clean:  ## remove outputs (artifacts/ of every profile, reports/) and caches; never data/ or .venv/
	rm -rf artifacts reports/*/ .pytest_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
