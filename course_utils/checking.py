"""The exercise registry, the checker runner and the notebook-facing display.

A chapter's checkers live in ``course_utils/checks/chNN_*.py``. Each one is a function decorated with
:func:`exercise`; it receives the learner's objects, calls them only inside :func:`step` blocks, raises
:class:`Fail` with one cause and one hint when something is wrong, and returns a one-line summary on
success. :func:`run` turns that into a :class:`CheckResult` and never raises for anything a learner wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib
import inspect
import io
import os
import pkgutil
import random
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from course_utils import i18n

STATUSES = ("pass", "fail", "not_attempted", "checker_error")
TIME_BUDGET_S = 2.0
"""Seconds a whole check may take before the learner's code is interrupted."""

_ID_PATTERN = re.compile(r"^ch(\d+)\.[a-z][a-z0-9_]*$")
_LABELS = {
    "pass": i18n.N_("PASS"),
    "fail": i18n.N_("FAIL"),
    "not_attempted": i18n.N_("NOT ATTEMPTED"),
    "checker_error": i18n.N_("CHECKER ERROR"),
}
_HINT = i18n.N_("Hint: ")  # with its punctuation: "提示："
_ICONS = {"pass": "✔", "fail": "✘", "not_attempted": "○", "checker_error": "⚠"}
_COLOURS = {  # (border, background)
    "pass": ("#2e7d32", "#e8f5e9"),
    "fail": ("#c62828", "#ffebee"),
    "not_attempted": ("#546e7a", "#eceff1"),
    "checker_error": ("#ef6c00", "#fff3e0"),
}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. Truthy only when the exercise passed."""

    exercise_id: str
    title: str
    status: str
    message: str
    hint: str | None = None
    language: str = dataclasses.field(default=i18n.ENGLISH, compare=False)  # of the labels around the message

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES} (got {self.status!r})")

    def __bool__(self) -> bool:
        return self.status == "pass"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        text = f"[{self._label()}] {self.exercise_id} ({self.title}): {self.message}"
        if self.hint:
            text += f"\n    {self._word(_HINT)}{self.hint}"
        return text

    def _word(self, english: str) -> str:
        return i18n.translate_message(english, self.language)

    def _label(self) -> str:
        return self._word(_LABELS[self.status])

    def __repr__(self) -> str:  # what Jupyter shows as text/plain
        return str(self)

    def _repr_html_(self) -> str:
        border, background = _COLOURS[self.status]
        hint = f"<br><i>{html.escape(self._word(_HINT).rstrip())}</i> {html.escape(self.hint)}" if self.hint else ""
        return (
            f'<div class="course-check course-check-{self.status}" data-status="{self.status}" '
            f'style="border-left:4px solid {border};background:{background};color:#212121;'
            f'padding:6px 10px;margin:4px 0;font-family:sans-serif;line-height:1.4">'
            f"<b>{_ICONS[self.status]} {html.escape(self._label().capitalize())}</b> &middot; "
            f"<code>{html.escape(self.exercise_id)}</code> {html.escape(self.title)}<br>"
            f"{html.escape(self.message)}{hint}</div>"
        )


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One registered exercise: what it is called, which learner names it reads, what it is worth."""

    id: str
    title: str
    names: tuple[str, ...]
    points: int
    checker: Callable[..., str] = dataclasses.field(repr=False, compare=False)

    @property
    def chapter(self) -> int:
        return int(_ID_PATTERN.match(self.id).group(1))


class Fail(Exception):
    """Raised by a checker: the learner's answer is wrong. One cause in ``message``, one ``hint``."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class NotAttempted(Exception):
    """Raised by a checker: the learner's answer is still a stub."""


class CheckNotPassed(Exception):
    """Raised by a notebook check in graded mode. IPython renders it as one line, without a traceback."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(str(result).replace("\n    ", " "))
        self.result = result

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


class _OutOfTime(BaseException):
    """Raised by the time-budget alarm; a BaseException so that a learner's ``except Exception`` misses it."""


_REGISTRY: dict[str, Exercise] = {}
_all_loaded = False


def exercise(
    exercise_id: str, *, title: str, names: tuple[str, ...] | list[str], points: int = 1
) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register a checker under ``exercise_id``.

    Args:
        exercise_id: ``"ch<N>.<name>"``, e.g. ``"ch1.build_mlp"``.
        title: a few words shown with every result.
        names: the learner's names the checker receives, in order.
        points: what the exercise is worth in grading.

    Raises:
        ValueError: for a malformed or duplicate id, no names, or non-positive points.
    """
    if not _ID_PATTERN.match(exercise_id):
        raise ValueError(f"exercise id must look like 'ch1.build_mlp' (got {exercise_id!r})")
    if not names:
        raise ValueError(f"exercise {exercise_id} must read at least one name")
    if points < 1:
        raise ValueError(f"points must be positive (got {points})")

    def register(checker: Callable[..., str]) -> Callable[..., str]:
        if exercise_id in _REGISTRY and _REGISTRY[exercise_id].checker is not checker:
            # Re-importing the same module (importlib.reload) re-registers; two modules may not share an id.
            previous = _REGISTRY[exercise_id].checker
            if (previous.__module__, previous.__qualname__) != (checker.__module__, checker.__qualname__):
                raise ValueError(f"exercise id {exercise_id!r} is registered twice")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, tuple(names), points, checker)
        return checker

    return register


def _load_all_checks() -> None:
    global _all_loaded
    if _all_loaded:
        return
    from course_utils import checks

    for info in sorted(pkgutil.iter_modules(checks.__path__), key=lambda m: m.name):
        importlib.import_module(f"{checks.__name__}.{info.name}")
    _all_loaded = True


def registry() -> dict[str, Exercise]:
    """Every registered exercise, by id, in chapter order."""
    _load_all_checks()
    # Chapter modules are imported in name order, so insertion order is chapter order.
    return dict(_REGISTRY)


def chapter_exercises(chapter: int) -> list[Exercise]:
    """The exercises of one chapter, in the order the chapter defines them."""
    return [ex for ex in registry().values() if ex.chapter == chapter]


# --- helpers for checkers -------------------------------------------------------------------------


@contextlib.contextmanager
def step(doing: str) -> Iterator[None]:
    """Run learner code. Its exceptions become a one-line :class:`Fail` that says what we were doing.

    Args:
        doing: what the checker is doing, e.g. ``"calling build_mlp([784, 256, 10])"``.
    """
    try:
        yield
    except (Fail, NotAttempted):
        raise
    except _OutOfTime:
        raise Fail(
            f"{doing} did not finish within {TIME_BUDGET_S:g} s.",
            hint="Look for a loop that never ends (a while loop whose condition never changes).",
        ) from None
    except NotImplementedError as error:
        if "missing the required" in str(error):  # nn.Module's own message when forward is not defined
            raise Fail(
                f"{doing} failed: the module has no forward method.",
                hint="Define a method named exactly forward (check its spelling and indentation).",
            ) from None
        raise NotAttempted(f"{doing} raised NotImplementedError: this part is still a stub.") from None
    except RecursionError:
        raise Fail(
            f"{doing} recursed without end.",
            hint="A forward that calls self(...) or self.forward(...) calls itself forever.",
        ) from None
    except Exception as error:  # the learner's own exception, shown as one line
        hint = None
        if "before Module.__init__() call" in str(error):
            hint = "Call super().__init__() first thing in __init__, before assigning any layer."
        raise Fail(f"{doing} raised {type(error).__name__}: {first_line(error)}", hint) from None


def expect_raises(
    exception_type: type[BaseException], doing: str, func: Callable[..., Any], *args: Any, hint: str | None = None
) -> BaseException:
    """Call learner code that must raise ``exception_type``; return the exception it raised.

    Raises:
        Fail: when it returns normally or raises something else.
    """
    expected = exception_type.__name__
    try:
        with step(doing):
            value = func(*args)
    except Fail as failure:
        if isinstance(failure.__context__, exception_type):
            return failure.__context__
        raise Fail(f"{failure.message} Expected {expected}.", hint) from None
    raise Fail(f"{doing} returned {describe(value)}; expected it to raise {expected}.", hint)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, shortened, without memory addresses."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
    text = re.sub(r"\s*\bat 0x[0-9a-fA-F]+", "", text)
    return text if len(text) <= 200 else text[:197] + "..."


def expect(condition: bool, message: str, hint: str | None = None) -> None:
    """Raise :class:`Fail` with ``message`` and ``hint`` unless ``condition`` holds."""
    if not condition:
        raise Fail(message, hint)


def describe(value: Any) -> str:
    """A short, deterministic description of any value, for "(got ...)" in messages."""
    if value is None:
        return "None"
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    module = type(value).__module__
    if module.startswith("torch") and hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a tensor of shape {tuple(value.shape)}"
    if module.startswith("numpy") and hasattr(value, "shape"):
        return f"a NumPy array of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list | set):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:5])
        return f"a dict with keys [{keys}]"
    if inspect.isclass(value):
        return f"the class {value.__name__}"
    if inspect.isroutine(value):
        return f"the function {getattr(value, '__name__', '?')}"
    return f"a {type(value).__name__} object"


# --- running a check --------------------------------------------------------------------------------


@contextlib.contextmanager
def _time_budget(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread with SIGALRM only; elsewhere no limit)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _OutOfTime

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *previous_timer)


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Fork every RNG, seed it, use one thread, and swallow the learner's prints and warnings."""
    import numpy as np
    import torch

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    threads = torch.get_num_threads()
    # Checks run tiny inputs: one thread is faster, and steadier when other processes share the cores.
    torch.set_num_threads(1)
    try:
        with (
            torch.random.fork_rng(devices=[]),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            random.seed(0)
            np.random.seed(0)
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def strict_mode() -> bool:
    """True when ``COURSE_UTILS_STRICT=1``: checker bugs raise instead of being reported politely."""
    return os.environ.get("COURSE_UTILS_STRICT") == "1"


def grading_mode() -> bool:
    """True when a notebook check that does not pass must raise.

    That is when ``COURSE_UTILS_GRADING=1``, and when nbgrader runs the notebook (``nbgrader autograde`` and
    ``nbgrader validate`` set ``NBGRADER_EXECUTION``): its test cells pass exactly when they raise nothing.
    """
    return os.environ.get("COURSE_UTILS_GRADING") == "1" or os.environ.get("NBGRADER_EXECUTION") in _NBGRADER_RUNS


_NBGRADER_RUNS = ("autograde", "validate")


class CheckerBug(RuntimeError):
    """Raised in strict mode when a checker itself fails."""


def run(exercise_id: str, namespace: Mapping[str, Any]) -> CheckResult:
    """Check one exercise against the learner's names.

    Args:
        exercise_id: a registered id such as ``"ch1.build_mlp"``.
        namespace: where the learner's names live (``globals()`` in a notebook).

    Returns:
        The result, in the language chosen with ``course_utils.set_language``; it never raises for anything a
        learner wrote.

    Raises:
        CheckerBug: only in strict mode, when the checker itself is broken.
    """
    return _localized(_run(exercise_id, namespace))


def _localized(result: CheckResult, language: str | None = None) -> CheckResult:
    language = language or i18n.get_language()
    if language == i18n.ENGLISH:
        return result
    return dataclasses.replace(
        result,
        title=i18n.translate_message(result.title, language),
        message=i18n.translate_message(result.message, language),
        hint=i18n.translate_message(result.hint, language),
        language=language,
    )


_SHOWN = re.compile(r"\[(?P<label>[A-Z ]+)\] (?P<id>ch\d+\.[a-z][a-z0-9_]*) \(")


def translated_display(data: Mapping[str, Any], language: str) -> dict[str, str] | None:
    """A check result stored in a notebook (its display data), shown in ``language``; None if it is not one.

    The translated editions copy the English edition's outputs instead of running the notebooks again; this
    renders the check results among them in the edition's language, from the same catalog the checkers use.
    Anything that does not read back as exactly one English result is left alone (None).
    """
    text = data.get("text/plain")
    found = _SHOWN.match(text) if isinstance(text, str) else None
    statuses = {label: status for status, label in _LABELS.items()}
    if found is None or found["label"] not in statuses or found["id"] not in registry():
        return None
    prefix = f"[{found['label']}] {found['id']} ({registry()[found['id']].title}): "
    if not text.startswith(prefix):
        return None
    message, _, hint = text[len(prefix) :].partition(f"\n    {_HINT}")
    result = CheckResult(found["id"], registry()[found["id"]].title, statuses[found["label"]], message, hint or None)
    if str(result) != text or result._repr_html_() != data.get("text/html"):
        return None
    shown = _localized(result, language)
    return {"text/html": shown._repr_html_(), "text/plain": str(shown)}


def _run(exercise_id: str, namespace: Mapping[str, Any]) -> CheckResult:
    exercises = registry()
    if exercise_id not in exercises:
        return _checker_error(exercise_id, "", f"There is no exercise called {exercise_id!r}.", None)
    ex = exercises[exercise_id]
    values = []
    for name in ex.names:
        value = namespace.get(name, Ellipsis) if isinstance(namespace, Mapping) else Ellipsis
        if value is Ellipsis:
            return CheckResult(
                ex.id, ex.title, "not_attempted", f"{name} is not defined yet.", f"Write {name}, then run its cell."
            )
        values.append(value)
    try:
        with _isolated(), _time_budget(TIME_BUDGET_S):
            summary = ex.checker(*values)
    except Fail as failure:
        return CheckResult(ex.id, ex.title, "fail", failure.message, failure.hint)
    except NotAttempted as stub:
        return CheckResult(ex.id, ex.title, "not_attempted", str(stub), f"Replace the stub in {ex.names[0]}.")
    except _OutOfTime as error:
        return _checker_error(ex.id, ex.title, "The checker itself ran out of time.", error)
    except Exception as error:
        return _checker_error(ex.id, ex.title, f"{type(error).__name__}: {first_line(error)}", error)
    return CheckResult(ex.id, ex.title, "pass", summary)


def _checker_error(exercise_id: str, title: str, detail: str, error: BaseException | None) -> CheckResult:
    if strict_mode():
        raise CheckerBug(f"checker for {exercise_id!r} failed: {detail}") from error
    return CheckResult(
        exercise_id,
        title,
        "checker_error",
        f"The checker itself has a bug, not your code ({detail}).",
        "Please tell your instructor; your answer may well be right.",
    )


# --- the notebook side ------------------------------------------------------------------------------


def show(result: CheckResult) -> None:
    """Display a result (HTML in Jupyter, text elsewhere); in graded mode, raise unless it passed."""
    if grading_mode() and not result:
        raise CheckNotPassed(result)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with the course
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(result)
    else:
        print(result)


def make_check(exercise_id: str) -> Callable[..., None]:
    """Build the notebook-facing ``check_<name>(...)`` function of a registered exercise.

    Call it in the checks module right after the checker is registered.
    """
    ex = _REGISTRY[exercise_id]

    def check(*args: Any, **kwargs: Any) -> None:
        if len(args) > len(ex.names) or set(kwargs) - set(ex.names):
            expected = ", ".join(ex.names)
            message = f"{check.__name__} takes your {expected} and nothing else."
            show(_localized(CheckResult(ex.id, ex.title, "fail", message, None)))
            return
        namespace = dict(zip(ex.names, args, strict=False)) | kwargs
        show(run(ex.id, namespace))

    check.__name__ = check.__qualname__ = f"check_{exercise_id.split('.', 1)[1]}"
    check.__doc__ = f"Check exercise {ex.id} ({ex.title}): pass your {', '.join(ex.names)}."
    check.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in ex.names]
    )
    check.__module__ = ex.checker.__module__
    return check
