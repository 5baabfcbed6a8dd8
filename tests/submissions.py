"""Fixture submissions: a chapter's notebook as learners hand it in, built from the edition they got and the references.

tests/test_grade.py and tests/test_nbgrader_course.py build their submissions here, from the student edition or
from nbgrader's release of a chapter (both keep the source edition's cell ids): every exercise solved, nothing
touched, or some exercises right and the others wrong or left as stubs. Which exercise a cell answers comes from
the registry (the names an exercise reads are the names its cells define), so this follows the chapters as they
change.
"""

from __future__ import annotations

import ast
import copy
import dataclasses

import nbformat

from course_utils import build, checking
from course_utils.paths import NOTEBOOKS_DIR, SOLUTIONS_NOTEBOOKS_DIR

WRONG = 'raise ValueError("a deliberately wrong answer")'
"""What replaces each solution region of an exercise answered wrong (a learner's own exception: a failure)."""


def is_exercise(cell: nbformat.NotebookNode) -> bool:
    """An exercise cell of any edition: solved (source), or a stub (ours and nbgrader's both say YOUR CODE HERE)."""
    return cell.cell_type == "code" and (build.BEGIN in cell.source or build.STUB_COMMENT in cell.source)


def is_check(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and "check_" in cell.source and "import" not in cell.source


def trimmed(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Only the import, exercise and check cells (the explanatory demos only cost time)."""
    nb = copy.deepcopy(nb)
    kept = [c for c in nb.cells if c.cell_type == "code"]
    nb.cells = [c for c in kept if "import " in c.source or is_exercise(c) or is_check(c)]
    return nb


def source_edition(name: str) -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS_NOTEBOOKS_DIR / name, as_version=4)


def student_edition(name: str, trim: bool = True) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    return trimmed(nb) if trim else nb


def _defined_names(source: str) -> set[str]:
    return {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef | ast.ClassDef)}


def _loaded_names(source: str) -> set[str]:
    return {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}


@dataclasses.dataclass(frozen=True)
class Answers:
    """Where a notebook's exercises are answered: their ids in the order they are checked, their cells, and the
    other exercises each answer builds on."""

    chapter: int
    exercises: tuple[str, ...]
    cells: dict[str, tuple[str, ...]]  # exercise id -> ids of the cells that answer it
    references: dict[str, str]  # cell id -> the source edition's (solved) source
    depends_on: dict[str, frozenset[str]]  # exercise id -> the exercises whose learner answers its answer uses

    @classmethod
    def of(cls, source: nbformat.NotebookNode, chapter: int) -> Answers:
        """Read them from a source-edition notebook of ``chapter``."""
        code = [cell.source for cell in source.cells if cell.cell_type == "code"]
        exercises = list(dict.fromkeys(ex for text in code for ex in build.checked_exercises(text, chapter)))
        cells: dict[str, list[str]] = {ex.id: [] for ex in exercises}
        references = {}
        for cell in source.cells:
            if cell.cell_type != "code" or build.BEGIN not in cell.source:
                continue
            owners = [ex.id for ex in exercises if _defined_names(cell.source) & set(ex.names)]
            if len(owners) != 1:
                raise ValueError(f"cell {cell.id} answers {len(owners)} exercises ({owners}); fixtures need one")
            cells[owners[0]].append(cell.id)
            references[cell.id] = cell.source
        unanswered = [ex for ex, answer in cells.items() if not answer]
        if unanswered:
            raise ValueError(f"no exercise cell defines what {unanswered[0]} checks")
        depends_on = {}
        for ex in exercises:
            used = set().union(*(_loaded_names(references[c]) for c in cells[ex.id]))
            depends_on[ex.id] = frozenset(o.id for o in exercises if o.id != ex.id and used & set(o.names))
        ids = tuple(ex.id for ex in exercises)
        return cls(chapter, ids, {k: tuple(v) for k, v in cells.items()}, references, depends_on)

    def closed(self, chosen: set[str] | list[str] | tuple[str, ...]) -> set[str]:
        """The exercises of ``chosen`` whose answers use only other chosen answers (in chapter order)."""
        kept: set[str] = set()
        for ex in self.exercises:
            if ex in chosen and self.depends_on[ex] <= kept:
                kept.add(ex)
        return kept

    def submission(self, nb: nbformat.NotebookNode, right=(), wrong=()) -> nbformat.NotebookNode:
        """A copy of ``nb`` (student edition or release) with the ``right`` exercises solved, the ``wrong`` ones
        answered with :data:`WRONG` in each solution region, and the others left as they were."""
        replace = {c: self.references[c] for ex in right for c in self.cells[ex]}
        replace |= {c: _wrong(self.references[c]) for ex in wrong for c in self.cells[ex]}
        nb = copy.deepcopy(nb)
        for cell in nb.cells:
            if cell.get("id") in replace:
                cell.source = replace[cell.id]
        return nb

    def plans(self) -> dict[str, tuple[set[str], set[str]]]:
        """Named fixtures as (right, wrong): all right, untouched, right then wrong, and a mixture.

        The right sets are closed under :meth:`closed`, so an exercise answered right never builds on an answer
        that is wrong; each fixture is then worth exactly the points of its right exercises.
        """
        order = self.exercises
        half = self.closed(order[: (len(order) + 1) // 2])
        even = self.closed(order[::2])
        return {
            "solved": (set(order), set()),
            "untouched": (set(), set()),
            "right_then_wrong": (half, set(order) - half),
            "mixed": (even, {ex for i, ex in enumerate(order) if ex not in even and i % 4 == 1}),
        }

    def expected(self, right: set[str]) -> dict[str, int]:
        """Points per exercise when exactly ``right`` are right."""
        points = {ex.id: ex.points for ex in checking.chapter_exercises(self.chapter)}
        return {ex: points[ex] if ex in right else 0 for ex in self.exercises}


def _wrong(source: str) -> str:
    return build._REGION.sub(lambda m: f"{m.group(1)}{WRONG}\n", source).rstrip("\n")


CH1_WRONG_BUILD_MLP = """\
def build_mlp(sizes):
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])
"""
"""A real mistake in chapter 1's first exercise: the right layers, but unnamed (worth 0 of its points)."""


def with_cell(nb: nbformat.NotebookNode, source: str, position: int) -> nbformat.NotebookNode:
    """A copy of ``nb`` with a code cell of ``source`` inserted at ``position``."""
    nb = copy.deepcopy(nb)
    cell = nbformat.v4.new_code_cell(source)
    cell.id = f"extra-{position}"
    nb.cells.insert(position, cell)
    return nb


def after_imports(nb: nbformat.NotebookNode) -> int:
    """The index of the first exercise cell."""
    return next(i for i, c in enumerate(nb.cells) if is_exercise(c))
