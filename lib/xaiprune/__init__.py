"""xaiprune: a reproducible study of XAI-guided dynamic pruning for distributed DNN inference.

One subpackage per system of the study, with only what every system uses at the top:

- top level: :mod:`~xaiprune.paths` (every folder), :mod:`~xaiprune.names` (the registry of names a parameter
  may take), :mod:`~xaiprune.data` (MedMNIST files and the scarce reference set), :mod:`~xaiprune.models`
  (segmented, LRP-ready classifiers), :mod:`~xaiprune.train` (cached deterministic training),
  :mod:`~xaiprune.stats` (intervals and paired comparisons) and :mod:`~xaiprune.synthetic` (tiny files for tests);
- :mod:`xaiprune.pruning`: filter relevance and pruning without fine-tuning (notebooks 03-04, and 11 in the ward
  regime; Yeom et al. 2021, Baccour et al.);
- :mod:`xaiprune.planning`: the system model, the integer program and the RL agent (05-06; Baccour et al.,
  reconstructed);
- :mod:`xaiprune.serving`: the plans served on real processes over emulated links (07);
- :mod:`xaiprune.dyfip`: DyFiP (08; Sabih et al. 2022, reconstructed);
- :mod:`xaiprune.compression`: XAI-guided compression (09; Sabih et al. 2020, reconstructed);
- :mod:`xaiprune.agilenn`: AgileNN (10; Huang and Gao 2022);
- :mod:`xaiprune.study`: the machinery that checks parameters, runs the notebooks and builds the report.

A package imports only the top level and the packages listed before it (``study`` reads names from the
registry and imports no system); ``tests/test_layout.py`` checks it.
"""

__version__ = "0.1.0"
