"""Lines of code and of prose (docstrings, comments) in a tree: `python -m devtools.line_counts`.

Blank lines count as neither; the renovation's figures before and after are in docs/layout.md."""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path


def counts(source: str) -> tuple[int, int]:
    """(code lines, prose lines) of one module: a line holding only a docstring or a comment is
    prose; a line with code on it is code, even with a comment after it."""
    prose: set[int] = set()
    code: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            prose.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            prose.add(token.start[0])
        elif token.type not in _LAYOUT:
            code.update(range(token.start[0], token.end[0] + 1))
    code -= prose
    return len(code), len(prose)


_LAYOUT = {
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
    tokenize.ENCODING,
}


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["checkout", "devtools"])
    args = parser.parse_args()
    for root in args.roots:
        files = sorted(Path(root).rglob("*.py"))
        totals = [counts(path.read_text(encoding="utf-8")) for path in files]
        code = sum(c for c, _ in totals)
        prose = sum(p for _, p in totals)
        print(f"{root}: {len(files)} modules, {code} lines of code, {prose} lines of prose")


if __name__ == "__main__":
    main()
