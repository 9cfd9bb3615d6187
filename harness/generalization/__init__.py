"""The controlled generalization suite (reversals, syllogisms, semantic structure), generated from a seed.

See suite.py for the tasks and their rows; tasks/generalization/ holds the lm-eval YAML.
"""
from harness.generalization.suite import (TASKS, build, generate, load_reversals, load_semantic,  # noqa: F401
                                          load_syllogisms, options)
