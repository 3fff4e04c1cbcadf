"""The tests mirror the package: the tests of a subpackage ``pmf.<sub>`` live in ``tests/<sub>/`` (the ``pmf``
commands' in ``tests/commands/``), those of a top-level module in ``tests/``. Test modules are imported by their
basename (pytest's default import mode, no ``__init__.py``), so no two share one; ``helpers.py`` (functions) and
``conftest.py`` (fixtures) sit in ``tests/`` for every folder, a folder's own fixtures in its ``conftest.py``,
which no module imports (several share the name), and ``tests/fixtures/`` holds data only."""

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "src" / "pmf"
SHARED = {"conftest.py", "helpers.py"}  # in tests/; conftest.py in the folders too


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _subpackages() -> set[str]:
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def test_every_test_folder_mirrors_a_subpackage():
    wrong = [str(p.relative_to(TESTS)) for p in _python_files()
             if p.parent != TESTS and not (PACKAGE / p.parent.relative_to(TESTS) / "__init__.py").is_file()]
    assert not wrong, f"test files in folders that mirror no package of src/pmf: {wrong}"


def test_only_test_modules_in_the_folders_and_the_shared_ones_at_the_top():
    wrong = [str(p.relative_to(TESTS)) for p in _python_files()
             if not (p.name.startswith("test_") or p.name == "conftest.py" or (p.parent == TESTS and p.name in SHARED))]
    assert not wrong, f"not a test module, or a shared one below tests/: {wrong}"


def test_no_module_imports_a_conftest():
    """A folder's conftest.py shares the module name ``conftest`` with the others, so an import of it reaches
    whichever pytest loaded last: what tests share besides fixtures lives in helpers.py."""
    imports = re.compile(r"^\s*(from conftest import|import conftest\b)", re.M)
    wrong = [str(p.relative_to(TESTS)) for p in _python_files() if imports.search(p.read_text())]
    assert not wrong, f"modules that import a conftest: {wrong}"


def test_no_two_test_modules_share_a_basename():
    names = [p.name for p in _python_files() if p.name != "conftest.py"]  # pytest loads each conftest.py apart
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)


def test_a_top_level_test_of_a_subpackage_lives_in_its_folder():
    """``tests/test_<sub>.py``, or ``tests/test_<module>.py`` for a module only a subpackage has, belongs in
    ``tests/<sub>/``."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    inner = {p.stem for sub in _subpackages() for p in (PACKAGE / sub).glob("*.py")} - top
    wrong = [p.name for p in TESTS.glob("test_*.py") if p.stem[len("test_"):] in _subpackages() | inner]
    assert not wrong, f"tests of a subpackage outside its folder: {wrong}"
