"""Prefect orchestration of the clipsep pipeline (the only place that imports prefect).

``flows.train_clipsep``: the ``train-clipsep`` flow, whose tasks are the stage functions of
:mod:`clipsep.stages`; ``flows.serve``: the long-running process serving its scheduled deployment.
"""
