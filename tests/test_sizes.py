"""The project's size rule, so that each part reads in one sitting: no source or test file over 300 lines, and no
function of the package or the benchmarks over 60, from its ``def`` line to its last. A file or function that
outgrows them is split into parts with names of their own."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def long_files(paths, root: Path = REPO, limit: int = MAX_FILE_LINES) -> list[str]:
    """``path: N lines`` (path below ``root``) of each file of ``paths`` over ``limit`` lines."""
    sizes = ((p, len(p.read_text().splitlines())) for p in paths)
    return [f"{p.relative_to(root)}: {n} lines" for p, n in sizes if n > limit]


def long_functions(paths, root: Path = REPO, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name: N lines`` (path below ``root``) of each function or method of ``paths``, nested ones
    too, over ``limit`` lines."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return found


def test_no_source_or_test_file_is_over_300_lines():
    wrong = long_files(_python_files("src", "tests"))
    assert not wrong, f"files over {MAX_FILE_LINES} lines (split them by topic): {wrong}"


def test_no_function_of_the_package_or_the_benchmarks_is_over_60_lines():
    wrong = long_functions(_python_files("src", "benchmarks"))
    assert not wrong, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {wrong}"


def test_the_checks_name_what_is_too_long(tmp_path):
    """A file of 301 lines and a function of 61 (a decorated async method) are named; a file of 300 lines and
    a function of 60 are not."""
    statements = "".join(f"        x{i} = {i}\n" for i in range(59))
    long, short = tmp_path / "long.py", tmp_path / "short.py"
    long.write_text("class A:\n    @staticmethod\n    async def step():\n" + statements + "        return 0\n"
                    + "#\n" * 238)
    short.write_text("def step():\n" + statements.replace("        ", "    ") + "#\n" * 240)
    assert [len(p.read_text().splitlines()) for p in (long, short)] == [301, 300]
    assert long_files([long, short], tmp_path) == ["long.py: 301 lines"]
    assert long_functions([long, short], tmp_path) == ["long.py:3 step: 61 lines"]
