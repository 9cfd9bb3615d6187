"""LiveCodeBench `grading=lcb_runner`: our verdicts are lcb_runner's, pinned program by program.

Each case is a solution and a small problem in LiveCodeBench's format. EXPECTED holds what lcb_runner
gives each of them: its per-sample result list (True per passed test, then the failing test's code: -2
wrong answer, -3 time limit, -4 runtime error; False where a functional answer compared unequal) and
its error code (None when it passed, -5 when the test process died without a result).

How EXPECTED was obtained: lcb_runner's own `evaluate_generations` (lcb_runner/evaluation/
compute_code_generation_metrics.py with testing_util.py, LiveCodeBench/LiveCodeBench at 28fef95, run
from a scratch copy, Python 3.11.7, numpy 2.4) graded every case below with timeout=1, and its output
was copied here. Nothing here calls lcb_runner: the table is literal.

The cases cover how solutions read stdin, write stdout and exit, integers past Python's 4,300-digit
limit, time limits (a caught one included), returned tuples and other values, and state that carries
from one test to the next. Time limits are the one intended difference (ours count CPU seconds): the
slow cases here spin or compute, so both clocks agree on them.
"""
from __future__ import annotations

import pytest

from harness import livecodebench as lcb

TIMEOUT_S = 1.0

REPUNIT_6000 = "1" * 6000
NINES_6000 = "9" * 6000
REPUNIT_60000 = "1" * 60000

# name: (func_name or None for stdin/stdout, [(input, expected output), ...])
PROBLEMS = {
    "sum2": (None, [("1 2\n", "3\n"), ("10 20\n", "30\n")]),
    "sumn": (None, [("3\n1\n2\n3\n", "6\n"), ("2\n5\n5\n", "10\n")]),
    "half": (None, [("5 2\n", "2.50\n"), ("9 3\n", "3\n")]),
    "big_out": (None, [("6000\n", REPUNIT_6000 + "\n")]),
    "big_in": (None, [(NINES_6000 + "\n", "1" + "0" * 6000 + "\n")]),
    "huge_out": (None, [("60000\n", REPUNIT_60000 + "\n")]),
    "f_add": ("add", [("1\n2", "3"), ("10\n20", "30")]),
    "f_minmax": ("minmax", [("[3, 1, 2]", "[1, 3]"), ("[5]", "[5, 5]")]),
    "f_adjacent": ("adjacent", [("[1, 2, 3]", "[[1, 2], [2, 3]]")]),
    "f_even": ("isEven", [("4", "true"), ("3", "false")]),
    "f_half": ("half", [("5", "2.5"), ("4", "2")]),
    "f_counts": ("counts", [("[1, 1, 2]", '{"1": 2, "2": 1}')]),
    "f_repunit": ("repunit", [("6000", REPUNIT_6000)]),
    "f_digits": ("digits", [(NINES_6000, "6000")]),
    "f_huge": ("repunit", [("60000", REPUNIT_60000)]),
}

ADD = "class Solution:\n    def add(self, a, b):\n"

# name: (problem, solution)
CASES = {
    # ---- reading stdin
    "input_split": ("sum2", "a, b = map(int, input().split())\nprint(a + b)\n"),
    "stdin_readline": ("sum2", "import sys\na, b = map(int, sys.stdin.readline().split())\nprint(a + b)\n"),
    "readline_as_input": ("sum2", "import sys\ninput = sys.stdin.readline\na, b = map(int, input().split())\n"
                                  "print(a + b)\n"),
    "stdin_read": ("sum2", "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n"),
    "stdin_buffer_read": ("sum2", "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nprint(a + b)\n"),
    "open_0": ("sum2", "a, b = map(int, open(0).read().split())\nprint(a + b)\n"),
    "lines_of_open_0": ("sum2", "print(sum(int(x) for line in open(0) for x in line.split()))\n"),
    "for_line_in_stdin": ("sum2", "import sys\nfor line in sys.stdin:\n    a, b = map(int, line.split())\n"
                                  "    print(a + b)\n"),
    "buffer_readline_repeats": ("sumn", "import sys\nn = int(sys.stdin.buffer.readline())\n"
                                        "print(sum(int(sys.stdin.buffer.readline()) for _ in range(n)))\n"),
    "from_sys_import_stdin": ("sumn", "from sys import stdin\nn = int(stdin.readline())\n"
                                      "print(sum(int(stdin.readline()) for _ in range(n)))\n"),
    "stdin_readlines": ("sumn", "import sys\nlines = sys.stdin.readlines()\nn = int(lines[0])\n"
                                "print(sum(int(x) for x in lines[1:n + 1]))\n"),
    "read_until_eof_error": ("sumn", "total, first = 0, True\nwhile True:\n    try:\n        line = input()\n"
                                     "    except EOFError:\n        break\n    if first:\n        first = False\n"
                                     "        continue\n    total += int(line)\nprint(total)\n"),
    "iter_input_until_empty": ("sumn", "values = [int(x) for x in iter(input, '')]\nprint(sum(values[1:]))\n"),
    "os_read_fd_0": ("sum2", "import os\na, b = map(int, os.read(0, 1 << 16).split())\nprint(a + b)\n"),
    # ---- writing stdout
    "stdout_write": ("sum2", "import sys\na, b = map(int, input().split())\nsys.stdout.write(f'{a + b}\\n')\n"),
    "stdout_buffer_write": ("sum2", "import sys\na, b = map(int, input().split())\n"
                                    "sys.stdout.buffer.write(f'{a + b}\\n'.encode())\n"),
    "from_sys_import_stdout": ("sum2", "from sys import stdout\na, b = map(int, input().split())\n"
                                       "stdout.write(f'{a + b}\\n')\n"),
    "os_write_fd_1": ("sum2", "import os\na, b = map(int, input().split())\nos.write(1, f'{a + b}\\n'.encode())\n"),
    "debug_on_stderr": ("sum2", "import sys\na, b = map(int, input().split())\nprint('debug', a, file=sys.stderr)\n"
                                "print(a + b, flush=True)\n"),
    "input_prompt": ("sum2", "a, b = map(int, input('numbers: ').split())\nprint(a + b)\n"),
    "close_stdout": ("sum2", "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.stdout.close()\n"),
    "spaces_and_blank_lines": ("sum2", "a, b = map(int, input().split())\nprint(' ', a + b, ' ')\nprint()\n"),
    "answer_twice": ("sum2", "a, b = map(int, input().split())\nprint(a + b)\nprint(a + b)\n"),
    "decimals_compare_by_value": ("half", "a, b = map(int, input().split())\nprint(a / b)\n"),
    "signalling_nan_on_test_2": ("sum2", "a, b = map(int, input().split())\nprint(a + b if a == 1 else 'sNaN')\n"),
    # ---- program structure (stdin)
    "global_statement": ("sum2", "total = 0\ndef add(x):\n    global total\n    total += x\n"
                                 "for x in map(int, input().split()):\n    add(x)\nprint(total)\n"),
    "closure_reads_top_level": ("sum2", "a, b = map(int, input().split())\ndef show():\n    print(a + b)\nshow()\n"),
    "main_guard_last": ("sum2", "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n\n"
                                "if __name__ == \"__main__\":\n    main()\n"),
    "main_guard_not_last": ("sum2", "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n\n"
                                    "if __name__ == '__main__':\n    main()\nDONE = True\n"),
    "main_guard_reversed": ("sum2", "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n\n"
                                    "if '__main__' == __name__:\n    main()\n"),
    "class_solution_in_a_script": ("sum2", "class Solution:\n    def solve(self, a, b):\n        return a + b\n"
                                           "a, b = map(int, input().split())\nprint(Solution().solve(a, b))\n"),
    "future_import_script": ("sum2", "from __future__ import annotations\na, b = map(int, input().split())\n"
                                     "print(a + b)\n"),
    "deep_recursion": ("sumn", "def total(i):\n    return values[i] + total(i + 1) if i < len(values) else 0\n"
                               "n = int(input())\nvalues = [int(input()) for _ in range(n)] * 3000\n"
                               "print(total(0) // 3000)\n"),
    "guarded_module": ("sum2", "import resource\na, b = map(int, input().split())\nprint(a + b)\n"),
    # ---- exits
    "exit_after_answer": ("sum2", "a, b = map(int, input().split())\nprint(a + b)\nexit()\n"),
    "sys_exit_1_after_answer": ("sum2", "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(1)\n"),
    "exit_before_answer_on_test_2": ("sum2", "a, b = map(int, input().split())\nif a == 10:\n    exit()\n"
                                             "print(a + b)\n"),
    "quit_after_answer": ("sum2", "a, b = map(int, input().split())\nprint(a + b)\nquit()\n"),
    "os_exit_after_answer": ("sum2", "import os\na, b = map(int, input().split())\nprint(a + b)\nos._exit(0)\n"),
    "keyboard_interrupt": ("sum2", "a, b = map(int, input().split())\nprint(a + b)\nraise KeyboardInterrupt\n"),
    "exit_in_method": ("f_add", ADD + "        exit()\n"),
    "sys_exit_in_method_on_test_2": ("f_add", "import sys\n" + ADD + "        if a == 10:\n            sys.exit(0)\n"
                                              "        return a + b\n"),
    "exit_at_module_level": ("f_add", ADD + "        return a + b\nraise SystemExit\n"),
    # ---- integers past 4,300 digits (lcb_runner allows 50,000)
    "print_6000_digits": ("big_out", "n = int(input())\nprint(int('1' * n))\n"),
    "read_6000_digits": ("big_in", "print(int(input()) + 1)\n"),
    "print_60000_digits": ("huge_out", "n = int(input())\nprint(int('1' * n))\n"),
    "return_6000_digits": ("f_repunit", "class Solution:\n    def repunit(self, n):\n        return int('1' * n)\n"),
    "argument_of_6000_digits": ("f_digits", "class Solution:\n    def digits(self, n):\n        return len(str(n))\n"),
    "expected_60000_digits": ("f_huge", "class Solution:\n    def repunit(self, n):\n        return int('1' * n)\n"),
    # ---- time limits
    "spin_script": ("sum2", "a, b = map(int, input().split())\nwhile True:\n    pass\n"),
    "spin_on_test_2_script": ("sum2", "a, b = map(int, input().split())\nwhile a == 10:\n    pass\nprint(a + b)\n"),
    "spin_method_on_test_2": ("f_add", ADD + "        while a == 10:\n            pass\n        return a + b\n"),
    "timeout_caught_in_script": ("sum2", "a, b = map(int, input().split())\ntry:\n    while True:\n        pass\n"
                                         "except Exception:\n    pass\nprint(a + b)\n"),
    "timeout_caught_in_method": ("f_add", ADD + "        try:\n            while True:\n                pass\n"
                                                "        except Exception:\n            return a + b\n"),
    "spin_at_module_level": ("f_add", "while True:\n    pass\n" + ADD + "        return a + b\n"),
    # ---- functional problems: structure
    "plain_function": ("f_add", "def add(a, b):\n    return a + b\n"),
    "solution_object_base": ("f_add", "class Solution(object):\n    def add(self, a, b):\n        return a + b\n"),
    "method_missing": ("f_add", "class Solution:\n    def plus(self, a, b):\n        return a + b\n"),
    "solution_needs_arguments": ("f_add", "class Solution:\n    def __init__(self, base):\n        self.base = base\n"
                                          "    def add(self, a, b):\n        return a + b\n"),
    "future_import_method": ("f_add", "from __future__ import annotations\n" + ADD + "        return a + b\n"),
    "syntax_error": ("f_add", ADD + "        return a +\n"),
    "prints_while_answering": ("f_add", ADD + "        print('adding', a, b)\n        return a + b\n"),
    "crash_on_test_2": ("f_add", ADD + "        return a + b if a == 1 else [][0]\n"),
    "guard_removed_getcwd": ("f_add", "import os\n" + ADD + "        os.getcwd()\n        return a + b\n"),
    # ---- functional problems: what is compared
    "tuple_returned": ("f_minmax", "class Solution:\n    def minmax(self, a):\n        return (min(a), max(a))\n"),
    "list_of_tuples": ("f_adjacent", "class Solution:\n    def adjacent(self, a):\n"
                                     "        return list(zip(a, a[1:]))\n"),
    "tuple_of_tuples": ("f_adjacent", "class Solution:\n    def adjacent(self, a):\n"
                                      "        return tuple(zip(a, a[1:]))\n"),
    "list_of_lists": ("f_adjacent", "class Solution:\n    def adjacent(self, a):\n"
                                    "        return [list(p) for p in zip(a, a[1:])]\n"),
    "int_for_bool": ("f_even", "class Solution:\n    def isEven(self, n):\n        return 1 if n % 2 == 0 else 0\n"),
    "float_for_int": ("f_half", "class Solution:\n    def half(self, n):\n        return n / 2\n"),
    "float_off_by_a_little": ("f_half", "class Solution:\n    def half(self, n):\n        return n / 2 + 1e-9\n"),
    "int_keys": ("f_counts", "class Solution:\n    def counts(self, a):\n        return dict(Counter(a))\n"),
    "numpy_array": ("f_minmax", "import numpy as np\nclass Solution:\n    def minmax(self, a):\n"
                                "        return np.array([min(a), max(a)])\n"),
    "numpy_scalar": ("f_add", "import numpy as np\n" + ADD + "        return np.int64(a) + np.int64(b)\n"),
    # ---- state across the tests of one sample
    "instance_counter": ("f_add", ADD + "        self.calls = getattr(self, 'calls', 0) + 1\n"
                                        "        return a + b + self.calls - 1\n"),
    "module_counter": ("f_add", "calls = 0\n" + ADD + "        global calls\n        calls += 1\n"
                                "        return a + b if calls == 1 else -1\n"),
    "mutable_default": ("f_add", "class Solution:\n    def add(self, a, b, seen=[]):\n        seen.append(a)\n"
                                 "        return a + b if len(seen) == 1 else 0\n"),
    "shared_cache": ("f_add", "class Solution:\n    cache = {}\n    def add(self, a, b):\n"
                              "        if (a, b) not in self.cache:\n            self.cache[a, b] = a + b\n"
                              "        return self.cache[a, b]\n"),
}

# name: (lcb_runner's result list, its error code) -- see the module docstring for how they were obtained.
EXPECTED = {
    'input_split': ([True, True], None),
    'stdin_readline': ([True, True], None),
    'readline_as_input': ([True, True], None),
    'stdin_read': ([True, True], None),
    'stdin_buffer_read': ([True, True], None),
    'open_0': ([-4], -4),
    'lines_of_open_0': ([-2], -2),
    'for_line_in_stdin': ([-4], -4),
    'buffer_readline_repeats': ([-2], -2),
    'from_sys_import_stdin': ([True, True], None),
    'stdin_readlines': ([True, True], None),
    'read_until_eof_error': ([True, True], None),
    'iter_input_until_empty': ([-4], -4),
    'os_read_fd_0': ([-4], -4),
    'stdout_write': ([True, True], None),
    'stdout_buffer_write': ([-4], -4),
    'from_sys_import_stdout': ([-2], -2),
    'os_write_fd_1': ([-2], -2),
    'debug_on_stderr': ([True, True], None),
    'input_prompt': ([-2], -2),
    'close_stdout': ([-4], -4),
    'spaces_and_blank_lines': ([True, True], None),
    'answer_twice': ([-2], -2),
    'decimals_compare_by_value': ([True, True], None),
    'signalling_nan_on_test_2': ([-4], -4),
    'global_statement': ([-4], -4),
    'closure_reads_top_level': ([True, True], None),
    'main_guard_last': ([True, True], None),
    'main_guard_not_last': ([-2], -2),
    'main_guard_reversed': ([-2], -2),
    'class_solution_in_a_script': ([-4], -4),
    'future_import_script': ([-4], -4),
    'deep_recursion': ([True, True], None),
    'guarded_module': ([-4], -4),
    'exit_after_answer': ([True, True], None),
    'sys_exit_1_after_answer': ([True, True], None),
    'exit_before_answer_on_test_2': ([True, -2], -2),
    'quit_after_answer': ([-4], -4),
    'os_exit_after_answer': ([-2], -5),
    'keyboard_interrupt': ([-2], -5),
    'exit_in_method': ([-2], -5),
    'sys_exit_in_method_on_test_2': ([-2], -5),
    'exit_at_module_level': ([-2], -5),
    'print_6000_digits': ([True], None),
    'read_6000_digits': ([True], None),
    'print_60000_digits': ([-4], -4),
    'return_6000_digits': ([True], None),
    'argument_of_6000_digits': ([True], None),
    'expected_60000_digits': ([-4], -4),
    'spin_script': ([-3], -3),
    'spin_on_test_2_script': ([True, -3], -3),
    'spin_method_on_test_2': ([True, -3], -3),
    'timeout_caught_in_script': ([-2], -2),
    'timeout_caught_in_method': ([True, True], None),
    'spin_at_module_level': ([-4], -4),
    'plain_function': ([True, True], None),
    'solution_object_base': ([True, True], None),
    'method_missing': ([-4], -4),
    'solution_needs_arguments': ([-4], -4),
    'future_import_method': ([-4], -4),
    'syntax_error': ([-4], -4),
    'prints_while_answering': ([True, True], None),
    'crash_on_test_2': ([True, -4], -4),
    'guard_removed_getcwd': ([-4], -4),
    'tuple_returned': ([True, True], None),
    'list_of_tuples': ([False], -2),
    'tuple_of_tuples': ([False], -2),
    'list_of_lists': ([True], None),
    'int_for_bool': ([True, True], None),
    'float_for_int': ([True, True], None),
    'float_off_by_a_little': ([False], -2),
    'int_keys': ([False], -2),
    'numpy_array': ([True, -4], -4),
    'numpy_scalar': ([True, True], None),
    'instance_counter': ([True, False], -2),
    'module_counter': ([True, False], -2),
    'mutable_default': ([True, False], -2),
    'shared_cache': ([True, True], None),
}


def problem(name: str) -> lcb.Problem:
    func_name, tests = PROBLEMS[name]
    return lcb.Problem(name, None, func_name, tuple(lcb.Test(i, o, False) for i, o in tests))


def test_the_suite_is_the_one_pinned():
    assert len(CASES) >= 40 and set(EXPECTED) == set(CASES)


@pytest.fixture(scope="module")
def verdicts():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        grades = pool.map(lambda case: lcb.grade(problem(case[0]), case[1], TIMEOUT_S, "lcb_runner"),
                          CASES.values())
        return dict(zip(CASES, grades))


@pytest.mark.parametrize("name", list(CASES))
def test_verdict_is_lcb_runners(name, verdicts):
    grade = verdicts[name]
    results, error_code = EXPECTED[name]
    assert (grade["lcb_results"], grade["lcb_error_code"]) == (results, error_code), grade["reason"]
    assert grade["passed"] == (error_code is None and all(r is True for r in results))
    assert grade["grading"] == "lcb_runner" and "\n" not in grade["reason"]
