"""Prefect orchestration of the clipsep pipeline (the only place that imports prefect).

``python -m flows`` (``flows/__main__.py``): one run of the flow; ``flows.train_clipsep``: the
``train-clipsep`` flow, whose tasks run the stage functions of :mod:`clipsep.stages`;
``flows.serve``: the long-running process serving its scheduled deployment; ``flows.entry``: the
environment both entry points set before Prefect is imported, and the flow's options.
"""
