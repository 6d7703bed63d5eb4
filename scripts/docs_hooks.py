"""mkdocs hooks: the reference pages that are generated from the code at build time.

A page listed in :data:`GENERATED` holds the line ``<!-- generated -->`` where the build
puts what the code says, so nothing generated is ever committed or stale:

* ``reference/cli.md``: every command, argument and option with its help, as Typer's own
  documentation generator writes it (``python -m typer necktool.cli utils docs``), from
  the very Click app ``necktool`` runs;
* ``reference/config.md``: every key of ``[tool.necktool]`` with where it goes, its type
  and description, as ``necktool schema --format markdown`` prints it from the JSON Schema.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

MARKER = "<!-- generated -->"


def _literal_stars(markdown: str) -> str:
    """Typer writes help text as it is (HTML-escaped), so two '*' of a help text, as in
    'rtol*|torch|', would become emphasis: outside code blocks, every '*' but a list
    item's bullet is a literal star."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            bullet = "* " if line.startswith("* ") else ""
            line = bullet + line[len(bullet):].replace("*", "\\*")
        out.append(line)
    return "\n".join(out) + "\n"


def cli_reference() -> str:
    """Typer's markdown for the whole app, below the page's own title."""
    docs = subprocess.run(
        [sys.executable, "-m", "typer", "necktool.cli", "utils", "docs", "--name", "necktool"],
        capture_output=True, text=True, check=True).stdout
    return _literal_stars(docs.split("\n", 1)[1])  # Typer's "# necktool": the page has one


def config_reference() -> str:
    """The schema's key table, as ``necktool schema --format markdown`` prints it."""
    from necktool.budgets.schema import SchemaDocument
    from necktool.cli.render import to_markdown

    text = to_markdown(SchemaDocument().blocks())
    text = re.sub(r"<(?!br>)", "&lt;", text)  # levels.<P3...> is text, not an HTML tag
    return re.sub(r"^### ", "## ", text, flags=re.M)


GENERATED: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_reference,
    "reference/config.md": config_reference,
}


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    make = GENERATED.get(page.file.src_uri)
    if make is None:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{page.file.src_uri} has no {MARKER} line for the generated part")
    return markdown.replace(MARKER, make(), 1)
