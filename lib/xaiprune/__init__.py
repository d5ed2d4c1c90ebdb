"""xaiprune: a reproducible study of XAI-guided dynamic pruning for distributed DNN inference.

One module per concern: ``paths`` (every folder), ``data`` (MedMNIST files and the reference set),
``models`` (segmented, LRP-ready classifiers), ``train`` (cached deterministic training),
``pipeline`` (papermill runner) and ``report`` (metrics, metadata, HTML index).
"""

__version__ = "0.1.0"
