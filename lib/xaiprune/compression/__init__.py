"""XAI-guided compression: relevance decides pruning, sharing and bits. Notebook ``09_compression``.

Reproduces Sabih, Hannig and Teich, "Utilizing Explainable AI for Quantization and Pruning of Deep Neural
Networks" (2020). The full text is not available here: the techniques are this project's reconstruction.

- :mod:`~xaiprune.compression.compress`: weight relevance, unstructured pruning, weight sharing, mixed precision;
- :mod:`~xaiprune.compression.storage`: the exact size in bits, and the file a compressed model is written to;
- :mod:`~xaiprune.compression.experiments`: each technique's XAI variant and its non-XAI counterparts, measured;
- :mod:`~xaiprune.compression.operating`: the operating points chosen on validation, the paired test on test AUC;
- :mod:`~xaiprune.compression.results`: ratios, the saved model, checks and metrics of the notebook;
- :mod:`~xaiprune.compression.figures`: the notebook's figures.
"""
