"""The programs a LiveCodeBench solution runs inside: lcb_runner's pre-imports, and grading=fair's drivers."""
from harness.livecodebench.problems import INT_MAX_STR_DIGITS

# The names lcb_runner imports before it runs a solution, in its order. Models lean on them (`List` in
# LeetCode signatures, `defaultdict`, `sqrt` with no import), and LCB counts such code correct.
_STAR_IMPORTS = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                 "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
PRELUDE = ("".join(f"from {m} import *\n" for m in _STAR_IMPORTS)
           + "import " + ", ".join(m for m in _STAR_IMPORTS if m not in ("builtins", "typing"))
           + "\nsys.setrecursionlimit(50000)\n")
RESULT_MARK = "@@harness-lcb-result@@"  # the fair functional driver's answer line


def stdin_program(code: str) -> str:
    """The solution run as a script after LCB's pre-imports; how it exits does not matter (as in LCB)."""
    return ("import sys\n"
            f"sys.set_int_max_str_digits({INT_MAX_STR_DIGITS})\n"
            "ns = {'__name__': '__main__'}\n"
            f"exec({PRELUDE!r}, ns)\n"
            "try:\n"
            f"    exec(compile({code!r}, '<solution>', 'exec'), ns)\n"
            "except SystemExit:\n"
            "    pass\n")


def functional_program(code: str, func_name: str) -> str:
    """Reads the arguments (one JSON value a line) from stdin, calls the method, writes the JSON result.

    The solution's own prints are dropped, as LCB ignores them: only the return value is its answer.
    """
    return ("import json, sys\n"
            f"sys.set_int_max_str_digits({INT_MAX_STR_DIGITS})\n"
            "args = [json.loads(line) for line in sys.stdin.read().split('\\n')]\n"
            "class Dropped:\n"
            "    def write(self, text):\n"
            "        return len(text)\n"
            "    def flush(self):\n"
            "        pass\n"
            "out, sys.stdout = sys.stdout, Dropped()\n"
            "ns = {'__name__': 'solution'}\n"
            f"exec({PRELUDE!r}, ns)\n"
            f"exec(compile({code!r}, '<solution>', 'exec'), ns)\n"
            "owner = ns['Solution']() if isinstance(ns.get('Solution'), type) else None\n"
            f"method = getattr(owner, {func_name!r}, None) if owner is not None else ns.get({func_name!r})\n"
            "if not callable(method):\n"
            f"    raise SystemExit('no method Solution.{func_name} (nor a function {func_name}) is defined')\n"
            "result = method(*args)\n"
            "def plain(value):  # numpy scalars and arrays: compared by their values\n"
            "    if hasattr(value, 'tolist'):\n"
            "        return value.tolist()\n"
            "    raise TypeError(f'the return value holds a {type(value).__name__}, which is not JSON data')\n"
            f"out.write({RESULT_MARK!r} + json.dumps(result, default=plain) + '\\n')\n")

