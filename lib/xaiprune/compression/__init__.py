"""XAI-guided compression: DeepLIFT relevance decides pruning, sharing and bits. Notebook ``09_compression``.

Reproduces Sabih, Hannig and Teich, "Utilizing Explainable AI for Quantization and Pruning of Deep Neural
Networks" (2020). The full text is not available here: the techniques, the weight-level DeepLIFT relevance and the
claim's targets are this project's reconstruction. Every variant first removes the dead weights (kernel taps that only
ever read zero padding at the input size), and DeepLIFT competes with the first-order Taylor saliency, the magnitude,
plain k-means and range or uniform bits on the live weights.

- :mod:`~xaiprune.compression.relevance`: every weight's DeepLIFT and Taylor relevance, the magnitude, the dead weights;
- :mod:`~xaiprune.compression.compress`: unstructured pruning, weight sharing, quantisation and mixed precision;
- :mod:`~xaiprune.compression.storage`: the exact size in bits, and the file a compressed model is written to;
- :mod:`~xaiprune.compression.experiments`: each technique's DeepLIFT variant and its non-XAI counterparts, measured;
- :mod:`~xaiprune.compression.operating`: the ratios read on validation, the test, the claim's targets and verdict;
- :mod:`~xaiprune.compression.results`: layers, operating points, the saved model, checks and metrics of the notebook;
- :mod:`~xaiprune.compression.figures`: the notebook's figures.
"""
