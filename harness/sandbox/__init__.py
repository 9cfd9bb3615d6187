"""Run untrusted, model-written Python in a confined, time- and resource-limited process.

    from harness.sandbox import Limits, run_python
    result = run_python("print(input()[::-1])", stdin="abc", limits=Limits(wall_s=5))
    result.status, result.stdout  # ("ok", "cba\\n")

Every protection layer is detected at run time and reported per run (`RunResult.protections`) and per
machine (`protections()`); README.md in this directory says what each layer does and does not stop.
"""
from harness.sandbox.runner import LAYERS, Limits, RunResult, cpu_time_limits, protections, run_many, run_python

__all__ = ["LAYERS", "Limits", "RunResult", "cpu_time_limits", "protections", "run_many", "run_python"]
