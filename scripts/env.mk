# Offline and telemetry-off defaults for every recipe (the mlflow ui, dvc and prefect commands need
# them; the Python entry points also apply them themselves). One home: OFFLINE_DEFAULTS in
# clipsep/env.py, printed as KEY=VALUE words by any python3 (standard library only, so before .venv
# exists). `?=`: a value already in your environment wins.
$(foreach kv,$(shell python3 $(dir $(lastword $(MAKEFILE_LIST)))../clipsep/env.py --make),$(eval export $(subst =, ?= ,$(kv))))
