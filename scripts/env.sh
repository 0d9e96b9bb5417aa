# Offline and telemetry-off defaults for every tool; sourced by the Makefile, .ci/run and test helpers.
export HF_HUB_OFFLINE=1
export DO_NOT_TRACK=true
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY=false
export PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS=false
export GRADIO_ANALYTICS_ENABLED=False
export GX_ANALYTICS_ENABLED=False
export DVC_NO_ANALYTICS=1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90   # a loaded 2-core box needs more than the default 20 s
