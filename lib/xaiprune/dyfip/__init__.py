"""DyFiP: an early branch picks the likely classes, then only their filters run. Notebook ``08_dyfip``.

Reproduces Sabih, Hannig and Teich, "DyFiP: Explainable AI-based Dynamic Filter Pruning of Convolutional
Neural Networks" (EuroMLSys 2022). The full text is not available here: the method is this project's
reconstruction from the abstract and the authors' earlier work.

- :mod:`~xaiprune.dyfip.core`: the branch, early exits, candidate sets and the evaluation engine of one split;
- :mod:`~xaiprune.dyfip.subnets`: class-specific relevance, subset scores and the cached sub-networks;
- :mod:`~xaiprune.dyfip.evaluation`: branch seeds, the validation grid, the choice of the operating point, the
  test at that point (the ablations, random draws, static models at equal FLOPs);
- :mod:`~xaiprune.dyfip.analysis`: the notebook's tables, the claim's comparisons, checks and metrics;
- :mod:`~xaiprune.dyfip.serve`: every sub-network built ahead of time, the test split served one image at a time;
- :mod:`~xaiprune.dyfip.study`: one flag's study step by step (the notebook's main flag) or whole (its second);
- :mod:`~xaiprune.dyfip.figures`: the notebook's figures.
"""
