"""The contract every exercise checker keeps, shared by the tests/test_exercises_*.py files.

A checker (``ddpm.exercises.<chapter>.check_*``, built on ``ddpm.exercises.grade``) must

1. accept the book's solution, the package's reference (where a test names one) and any other
   right answer, saying "correct";
2. list at least two typical mistakes;
3. reject each mistake with its own hint: the message ends with that hint and names no other
   mistake;
4. reject an unsolved stub (``raise NotImplementedError``) as "not solved yet";
5. report a crashing function (its exception named, no hint) instead of raising.

A test file declares its exercises and subclasses ``ExerciseContract``; the tests are
parametrized per exercise (and per answer or mistake), so a failure names the exercise::

    class TestContract(ExerciseContract):
        exercises = (Exercise(check_slerp, notebook_slerp, _SLERP_MISTAKES),)

The file keeps only what is specific to its exercises (garbage inputs, special hints, ...).
The test files import it as ``exercise_contract``: tests/ has no __init__.py, so pytest's default
("prepend") import mode puts tests/ on sys.path, whether it runs ``tests`` or a single file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from ddpm.exercises import CheckResult, Mistake


@dataclass(frozen=True)
class Exercise:
    """One checker and what it is tested with.

    ``solution``: the book's solution, written out in the test file. ``reference``: the
    package's own answer, where the file tests one. ``also_right``: other right answers.
    ``as_learner``: turns a mistake's ``fn`` (written against the checker's internal arguments)
    into a function the learner could pass, where the two differ. ``id`` defaults to the
    checker's name without ``check_``.
    """

    check: Callable[..., CheckResult]
    solution: Callable[..., Any]
    mistakes: Sequence[Mistake]
    reference: Callable[..., Any] | None = None
    also_right: Sequence[Callable[..., Any]] = ()
    as_learner: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
    id: str = ""

    @property
    def name(self) -> str:
        return self.id or self.check.__name__.removeprefix("check_")

    def right_answers(self) -> list[tuple[str, Callable[..., Any]]]:
        answers = [("solution", self.solution)]
        if self.reference is not None:
            answers.append(("reference", self.reference))
        answers += [
            (getattr(fn, "__name__", f"also_right{i}"), fn) for i, fn in enumerate(self.also_right)
        ]
        return answers


def each_exercise(exercises: Sequence[Exercise]):
    """``@each_exercise(EXERCISES)``: run a file's own test once per exercise (``exercise``)."""
    return pytest.mark.parametrize("exercise", [pytest.param(e, id=e.name) for e in exercises])


def unsolved_stub(*args, **kwargs):
    raise NotImplementedError("Exercise x.y: write your code here")


def crashing_function(*args, **kwargs):
    raise RuntimeError("shape mismatch")


class ExerciseContract:
    """Base of a ``Test...`` class whose ``exercises`` every contract test runs on."""

    exercises: ClassVar[Sequence[Exercise]] = ()

    def pytest_generate_tests(self, metafunc):
        assert self.exercises, f"{type(self).__name__} declares no exercises"
        args = metafunc.fixturenames
        if "answer" in args:
            params = [
                pytest.param(ex, fn, id=f"{ex.name}-{kind}")
                for ex in self.exercises
                for kind, fn in ex.right_answers()
            ]
            metafunc.parametrize(("exercise", "answer"), params)
        elif "mistake" in args:
            params = [
                pytest.param(ex, i, id=f"{ex.name}-mistake{i}")
                for ex in self.exercises
                for i in range(len(ex.mistakes))
            ]
            metafunc.parametrize(("exercise", "mistake"), params)
        elif "exercise" in args:
            params = [pytest.param(ex, id=ex.name) for ex in self.exercises]
            metafunc.parametrize("exercise", params)

    def test_right_answer_passes(self, exercise, answer):
        result = exercise.check(answer, verbose=False)
        assert result, result.message
        assert "correct" in result.message

    def test_lists_at_least_two_mistakes(self, exercise):
        assert len(exercise.mistakes) >= 2

    def test_mistake_is_rejected_with_its_hint(self, exercise, mistake):
        """Its own hint, last in the message, and no other mistake's (hints are distinct)."""
        hint, fn = exercise.mistakes[mistake].hint, exercise.mistakes[mistake].fn
        result = exercise.check(
            exercise.as_learner(fn) if exercise.as_learner else fn, verbose=False
        )
        assert not result
        assert hint in result.message, (hint, result.message)
        assert result.message.endswith(hint), (hint, result.message)
        others = [m.hint for i, m in enumerate(exercise.mistakes) if i != mistake]
        assert not [h for h in others if h in result.message], result.message

    def test_stub_is_not_solved_yet(self, exercise):
        result = exercise.check(unsolved_stub, verbose=False)
        assert not result
        assert "not solved yet" in result.message

    def test_crash_is_reported_not_raised(self, exercise):
        result = exercise.check(crashing_function, verbose=False)
        assert not result
        assert "RuntimeError" in result.message
        assert "Hint" not in result.message
