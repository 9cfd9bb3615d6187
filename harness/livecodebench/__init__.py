"""LiveCodeBench code generation (`livecodebench/code_generation_lite`), one module per purpose:

    data.py        release files, the contest-date window, the pool, lm-eval's custom_dataset hook
    problems.py    a row as a gradable problem: its tests, private tests decoded safely
    grading.py     grading a solution, grading=lcb_runner or grading=fair, and its statuses
    programs.py    what a solution runs inside: lcb_runner's pre-imports, the fair mode's drivers
    lcb_judge.py   lcb_runner's rules, run as a file in the sandbox once per sample (grading=lcb_runner)

The prompt, the demonstrations and pass@k live with the task, in tasks/code/lcb_utils.py.
"""
from harness.livecodebench.data import (HUB_REPO, HUB_REVISION, OPTIONS, RELEASE_FILES, LCBPoolInfo, build_splits,
                                        load_task_dataset, pool_info, release_files)
from harness.livecodebench.grading import (DEFAULT_GRADING, DEFAULT_TIMEOUT_S, GRADING_MODES, LCB_ERROR_CODES,
                                           MEMORY_MB, check_grading, compare_stdout, extract_code_lcb, grade,
                                           grade_samples)
from harness.livecodebench.problems import (FIELDS, INT_MAX_STR_DIGITS, MAX_PRIVATE_TESTS_BYTES, TASK, Problem, Test,
                                            TooManyDigits, decode_private_tests, parse_problem)
from harness.livecodebench.programs import PRELUDE, functional_program, stdin_program

__all__ = ["DEFAULT_GRADING", "DEFAULT_TIMEOUT_S", "FIELDS", "GRADING_MODES", "HUB_REPO", "HUB_REVISION",
           "INT_MAX_STR_DIGITS", "LCB_ERROR_CODES", "MAX_PRIVATE_TESTS_BYTES", "MEMORY_MB", "OPTIONS", "PRELUDE",
           "RELEASE_FILES", "TASK", "LCBPoolInfo", "Problem", "Test", "TooManyDigits", "build_splits",
           "check_grading", "compare_stdout", "decode_private_tests", "extract_code_lcb", "functional_program",
           "grade", "grade_samples", "load_task_dataset", "parse_problem", "pool_info", "release_files",
           "stdin_program"]
