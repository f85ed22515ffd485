"""Every ```python block of README.md and docs/python.md runs.

A block is skipped only when the line just before its fence is ``<!-- not run: REASON -->``
with a reason. The other blocks of a file run in order, in one namespace (a block may use what
an earlier one defined), in an empty temporary working directory. A failure names the file and
the line of the block's fence; the traceback's line numbers are those of the file.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/python.md")

FENCE = re.compile(r"^```python\s*$")
END = re.compile(r"^```\s*$")
#: ``<!-- not run: REASON -->``; group 1 is the reason (may be blank, which the meta-test refuses).
MARKER = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")
#: Anything that looks like a marker, written well or not.
ANY_MARKER = re.compile(r"not\s+run", re.IGNORECASE)

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Block:
    """One ```python block: ``line`` is the 1-based line of its opening fence."""

    line: int
    code: str
    reason: str | None  # the marker's reason, stripped; None: no marker before the fence

    @property
    def runs(self) -> bool:
        return not self.reason


def python_blocks(name: str, root: Path = ROOT) -> list[Block]:
    """The ```python blocks of ``name`` (relative to ``root``), in order."""
    lines = (root / name).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            end = next((j for j in range(i + 1, len(lines)) if END.match(lines[j])), None)
            if end is None:
                raise AssertionError(f"{name}:{i + 1}: a ```python block is never closed")
            marker = MARKER.match(lines[i - 1].strip()) if i else None
            blocks.append(Block(i + 1, "\n".join(lines[i + 1:end]), marker.group(1).strip() if marker else None))
            i = end
        i += 1
    return blocks


@pytest.mark.parametrize("name", FILES)
def test_python_blocks_run(name, tmp_path, monkeypatch):
    """The runnable blocks of one file, in order, in one namespace, in an empty folder, offline."""
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    namespace = {"__name__": "__snippets__"}
    for block in python_blocks(name):
        if not block.runs:
            continue
        # Padded so that the traceback's line numbers are the file's.
        code = compile("\n" * block.line + block.code, str(ROOT / name), "exec")
        failure = None
        try:
            exec(code, namespace)
        except Exception as e:
            trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            failure = f"{name}: the python block at line {block.line} failed: {type(e).__name__}: {e}\n\n{trace}"
        if failure:
            pytest.fail(failure, pytrace=False)


@pytest.mark.parametrize("name", FILES)
def test_each_file_has_runnable_blocks(name):
    blocks = python_blocks(name)
    assert any(b.runs for b in blocks), f"{name}: no ```python block runs ({len(blocks)} marked not run)"


def marker_problems(name: str, root: Path = ROOT) -> list[str]:
    """What is wrong with the ``not run`` markers of ``name``: a marker must be written
    ``<!-- not run: REASON -->``, with a reason, on the line just before a ```python fence
    (anywhere else it would skip nothing)."""
    lines = (root / name).read_text(encoding="utf-8").splitlines()
    problems = []
    for i, line in enumerate(lines):
        text = line.strip()
        if not (text.startswith("<!--") and ANY_MARKER.search(text)):
            continue
        marker = MARKER.match(text)
        if marker is None:
            problems.append(f"line {i + 1}: not written as <!-- not run: REASON -->: {text}")
        elif not marker.group(1).strip():
            problems.append(f"line {i + 1}: a not-run marker without a reason")
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            problems.append(f"line {i + 1}: a not-run marker that is not just before a ```python fence")
    return problems


@pytest.mark.parametrize("name", FILES)
def test_not_run_markers_give_a_reason(name):
    problems = marker_problems(name)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_block_parsing(tmp_path):
    """The parser: a marker skips only the block right after it, and only with a reason."""
    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- not run: needs a GPU -->\n```python\nskipped = 1\n```\n\n"
                   "<!-- not run: -->\n```python\nblank = 1\n```\n"
                   "<!-- not run: far -->\n\n```python\nfar = 1\n```\n```bash\nls\n```\n```python\nlast = 1\n```\n")
    blocks = python_blocks("doc.md", tmp_path)
    assert [(b.line, b.code, b.reason, b.runs) for b in blocks] == [
        (3, "skipped = 1", "needs a GPU", False), (8, "blank = 1", "", True),
        (13, "far = 1", None, True), (19, "last = 1", None, True)]
    assert marker_problems("doc.md", tmp_path) == [
        "line 7: a not-run marker without a reason",
        "line 11: a not-run marker that is not just before a ```python fence"]
