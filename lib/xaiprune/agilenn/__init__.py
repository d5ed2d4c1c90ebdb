"""AgileNN: explainable AI decides which features stay on a weak device. Notebook ``10_agilenn``.

Reproduces Huang and Gao, "Real-time Neural Network Inference on Extremely Weak Devices: Agile Offloading
with Explainable AI" (MobiCom 2022), in PyTorch, written after reading the official TensorFlow code.

- :mod:`~xaiprune.agilenn.model`: feature extractor, local predictor, soft-to-hard quantiser, remote predictor;
- :mod:`~xaiprune.agilenn.training`: the reference network and AgileNN's training over seeds, cached;
- :mod:`~xaiprune.agilenn.offload`: a device and a remote worker on two real processes, against local-only,
  full offload and split computing (``python -m xaiprune.agilenn.offload``);
- :mod:`~xaiprune.agilenn.analysis`: the link's cost model, payloads, latency tables, ablations, metrics;
- :mod:`~xaiprune.agilenn.claim`: the claim's statistics (AUC over seeds against the full model, latency ratios
  modelled and measured) and its verdict;
- :mod:`~xaiprune.agilenn.figures`: the notebook's figures.
"""
