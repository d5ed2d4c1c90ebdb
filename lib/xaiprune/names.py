"""The registry: every name a parameter may take, readable without importing any system.

The study machinery (:mod:`xaiprune.study`) validates parameters against these tables before any
notebook runs; the systems register the same names (``pruning.prune.CRITERIA``, ``models.ARCHS``,
``pruning.xai.METHODS``, ...) and ``tests/test_schema.py`` checks that both agree. Scenarios are read
from their YAML files here as plain data (device names and the source), so that checking a parameter
never imports the planning package.
"""

from __future__ import annotations

import yaml
from medmnist import INFO

from xaiprune import paths

ARCHS = ("resnet18", "small_cnn", "vgg16_bn")  # models.ARCHS
SEGMENTS = {"resnet18": 4, "small_cnn": 3, "vgg16_bn": 5}  # segments of each architecture
SIZES = (28, 64, 128, 224)  # MedMNIST image sides
SCOPES = ("global", "per-layer")  # how pruning.prune ranks filters
CRITERIA = ("bn_scale", "deeplift", "gradxact", "ig", "l1", "lamp", "lrp", "lrp_epsilon", "random", "taylor")
XAI_CRITERIA = ("lrp", "lrp_epsilon", "deeplift", "ig", "gradxact")  # the criteria that are explanations
XAI_METHODS = ("deeplift", "gradxact", "ig", "lrp", "lrp_epsilon")  # pruning.xai.METHODS
HOSPITAL = "hospital"  # the project's virtual flag: the three MedMNIST files below as one 9-class triage task
WARDS = {"pneumonia": "pneumoniamnist", "breast": "breastmnist", "retina": "retinamnist"}  # ward -> source, label order


def flags_2d() -> list[str]:
    """All 2D MedMNIST flags (the 3D volumes are out of scope)."""
    return [f for f, info in INFO.items() if not info["python_class"].endswith("3D")]


def multiclass_flags_2d() -> list[str]:
    """2D single-label flags with more than two classes: those where DyFiP's top-k candidates can prune anything."""
    return [f for f in flags_2d() if INFO[f]["task"] != "multi-label, binary-class" and len(INFO[f]["label"]) > 2]


def scenario_names() -> list[str]:
    """Scenario files in ``params/scenarios/``."""
    return sorted(p.stem for p in (paths.PARAMS / "scenarios").glob("*.yaml"))


def scenario_devices(name: str) -> tuple[list[str], int]:
    """The device names of scenario ``name`` in file order and the index of its source device."""
    spec = yaml.safe_load((paths.PARAMS / "scenarios" / f"{name}.yaml").read_text())
    names = [d["name"] for d in spec["devices"]]
    return names, names.index(spec["source"])
