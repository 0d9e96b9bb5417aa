# Two commands are the quick start: `make quickstart` (the main job end to end) and `make test`.
SHELL := /bin/bash
VENV := .venv
include scripts/env.mk

.PHONY: setup quickstart test bench-ingest clean-data

setup:
	@bash scripts/setup.sh

quickstart: setup
	$(VENV)/bin/dvc repro

test: setup
	$(VENV)/bin/python -m pytest -q

bench-ingest: setup
	$(VENV)/bin/python bench/ingest.py
