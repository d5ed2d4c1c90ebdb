"""AgileNN: explainable AI decides which features stay on a weak device. Notebook ``10_agilenn``.

Reproduces Huang and Gao, "Real-time Neural Network Inference on Extremely Weak Devices: Agile Offloading
with Explainable AI" (MobiCom 2022), in PyTorch, written after reading the official TensorFlow code.

- :mod:`~xaiprune.agilenn.model`: feature extractor, local predictor, soft-to-hard quantiser, remote predictor, and
  the same layers without the split (the equal-capacity network);
- :mod:`~xaiprune.agilenn.training`: the reference network and AgileNN's training over seeds, cached;
- :mod:`~xaiprune.agilenn.small`: the equal-capacity network's training and its split with a quantised activation;
- :mod:`~xaiprune.agilenn.regimes`: the paper's and the ward's device, link and remote, and what one image costs there;
- :mod:`~xaiprune.agilenn.offload`: a device and a remote on two real processes serving every method, timed by both
  processes' timestamps (``python -m xaiprune.agilenn.offload``);
- :mod:`~xaiprune.agilenn.analysis`: payloads, the split's cut, the serving runs per regime, latency tables, ablations;
- :mod:`~xaiprune.agilenn.claim`: the claim's statistics (parity over seeds with the same network offloaded, latency
  ratios modelled and measured against the nearest equal-capacity baseline), its verdict and ``metrics.json``;
- :mod:`~xaiprune.agilenn.figures`: the notebook's figures.
"""
