# Two commands are the quick start: `make quickstart` (the main job end to end) and `make test`.
SHELL := /bin/bash
VENV := .venv
include scripts/env.mk

.PHONY: setup quickstart lint test app bench flow platform platform-stop mlflow-ui

setup:
	@bash scripts/setup.sh

# The full train-clipsep flow on the embedded world (docs/platform.md); ends by printing where to look.
quickstart: setup
	@mkdir -p $${PREFECT_HOME:-$(CURDIR)/.platform/prefect}
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.platform/prefect} $(VENV)/bin/python -m flows

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup
	$(VENV)/bin/python -m pytest -q

# The demo on http://127.0.0.1:7860, serving models:/clipsep@champion (params.yaml `serve`).
app: setup
	$(VENV)/bin/python -m app

# Speed and memory benchmarks: each prints ratios against a baseline measured in the same run.
bench: setup
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/train.py
	$(VENV)/bin/python bench/separate.py
	$(VENV)/bin/python bench/app_load.py

# The platform (docs/platform.md): one flow run, the scheduled deployment, the MLflow UI.
flow: setup
	@mkdir -p $${PREFECT_HOME:-$(CURDIR)/.platform/prefect}
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.platform/prefect} $(VENV)/bin/python -m flows

platform: setup
	@bash scripts/platform.sh start

platform-stop:
	@bash scripts/platform.sh stop

mlflow-ui:
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000 --workers 1
