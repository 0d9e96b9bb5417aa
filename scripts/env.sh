# Offline and telemetry-off defaults for every tool; sourced by scripts/platform.sh (and by you:
# `source scripts/env.sh`). The list has one home, OFFLINE_DEFAULTS in clipsep/env.py, which every
# Python entry point applies itself; this file only exports it for the shell and the non-Python
# tools it starts (prefect server, mlflow ui, dvc). clipsep/env.py needs only the standard library,
# so any python3 prints it, before .venv exists. A value you already exported wins.
_clipsep_env=$(python3 "$(dirname "${BASH_SOURCE[0]}")/../clipsep/env.py") || {
  echo "scripts/env.sh: could not run python3 clipsep/env.py; install Python 3 (python3 on PATH)" >&2
  return 2
}
eval "$_clipsep_env"
unset _clipsep_env
