"""Hooks for the generalization task YAMLs (lm-eval `!function` targets): the data is generated in
harness/generalization/, from the dataset options."""
from harness.generalization import load_reversals, load_semantic, load_syllogisms  # noqa: F401
