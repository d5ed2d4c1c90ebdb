"""Filter relevance and pruning without fine-tuning: notebooks ``03_xai_scores``, ``04_pruning_comparison`` and
``11_ward_regime``.

Reproduces the criterion of Baccour et al. (ICC 2023; FGCS 2024): filters are scored by an explanation
method (LRP by default) on a handful of local reference images and the least relevant are removed, with no
fine-tuning; Yeom et al., "Pruning by explaining" (Pattern Recognition 2021) give the scoring convention.
The baselines are L1 norm (Li et al. 2017), first-order Taylor (Molchanov et al. 2017/2019) and random.

- :mod:`~xaiprune.pruning.lrp`: the composite LRP (zennit) and the epsilon variant;
- :mod:`~xaiprune.pruning.xai`: per-filter relevance of every explanation method;
- :mod:`~xaiprune.pruning.prune`: every criterion's scores and structural pruning (torch-pruning);
- :mod:`~xaiprune.pruning.ranking`: fixed rankings, cached per reference set;
- :mod:`~xaiprune.pruning.comparison`: the sweep of criteria x ratios x reference draws;
- :mod:`~xaiprune.pruning.verdict`: the paired, Holm-corrected test of LRP (the declared primary criterion)
  against each baseline, behind notebook 04's claim row;
- :mod:`~xaiprune.pruning.repairs` and :mod:`~xaiprune.pruning.repair_study`: repairs that train nothing
  (BatchNorm re-estimation, decision recalibration, mean-activation compensation) and their study;
- :mod:`~xaiprune.pruning.summaries` and :mod:`~xaiprune.pruning.plots`: the tables, sentences, metrics and
  figures of notebook 04, computed from its sweeps (and notebook 11's figure);
- :mod:`~xaiprune.pruning.wards`: the ward regime of notebook 11, a hospital-wide model pruned for one ward's
  classes, and its claim.
"""
