"""DyFiP: an early branch picks the likely classes, then only their filters run. Notebook ``08_dyfip``.

Reproduces Sabih, Hannig and Teich, "DyFiP: Explainable AI-based Dynamic Filter Pruning of Convolutional
Neural Networks" (EuroMLSys 2022). The full text is not available here: the method is this project's
reconstruction from the abstract and the authors' earlier work.

- :mod:`~xaiprune.dyfip.core`: the branch, early exits, candidate sets and the evaluation;
- :mod:`~xaiprune.dyfip.subnets`: class-specific relevance, subset scores and the cached sub-networks;
- :mod:`~xaiprune.dyfip.analysis`: the notebook's comparisons, targets, checks and metrics;
- :mod:`~xaiprune.dyfip.figures`: the notebook's figures.
"""
