"""Every text file the library and the launchers read or write is UTF-8, whatever the process's locale.

Python's default text encoding is the locale's, which an ASCII locale (a bare container, a
library that calls setlocale) makes ASCII: a case id, a folder name or a tqdm bar in a log
outside ASCII would then fail to be read or written. So every pathlib ``read_text`` /
``write_text`` and every text-mode ``open`` names its encoding (our ``atomic.write_text``
encodes UTF-8 itself).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*REPO.joinpath("paresseg_jax").rglob("*.py"), *REPO.joinpath("launch").rglob("*.py")])


def unnamed_encodings(source: str) -> list[int]:
    """Lines of text reads and writes that leave the encoding to the locale."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            if not (isinstance(func.value, ast.Name) and func.value.id == "atomic"):
                found.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and "b" in mode.value):
                found.append(node.lineno)
    return found


def test_the_check_finds_what_it_looks_for():
    source = ('p.read_text()\np.write_text(s)\nopen(f)\nopen(f, "a")\np.read_text(encoding="utf-8")\n'
              'open(f, "rb")\natomic.write_text(t, s)\nopen(f, mode="w", encoding="utf-8")\n')
    assert unnamed_encodings(source) == [1, 2, 3, 4]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_text_read_and_write_names_its_encoding(path):
    assert unnamed_encodings(path.read_text(encoding="utf-8")) == []
