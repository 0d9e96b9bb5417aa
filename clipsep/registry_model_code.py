"""The "models from code" file of a registered clipsep version (MLflow >= 2.12).

``tracking.register`` logs this file's path as ``python_model``; MLflow copies it into the version
and runs it when the version is loaded, and :func:`mlflow.models.set_model` names the model it
defines: a :class:`clipsep.registry_model.ClipSepPyfunc`, which reads its checkpoint (and CLIP
weights) from the version's artifacts in ``load_context``. Nothing in clipsep imports this module:
being run is what it is for, so it does its one thing at import.
"""

import mlflow.models

from clipsep.registry_model import ClipSepPyfunc

mlflow.models.set_model(ClipSepPyfunc())
