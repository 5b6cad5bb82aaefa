"""The markdown the stages write (`table.md`), rendered by markdown-it-py.

CommonMark with GitHub tables, raw HTML off (a stage's text is escaped, never interpreted).
Three changes to the stock renderer: headings are shifted down so a stage's "#" nests inside its
report section; tables are wrapped for horizontal scrolling; and image / relative-link targets are
rewritten through `resolve` (a path relative to the markdown file → its copy in the report, or
`#anchor` of the cards that show it); an unresolved image becomes its alt text, so no markdown
reference can break the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token

Resolver = Callable[[str], str | None]


def _is_relative(url: str) -> bool:
    return bool(url) and ":" not in url.split("/", 1)[0] and not url.startswith(("/", "#"))


def _rewrite(tokens: list[Token], heading_offset: int, resolve: Resolver | None) -> None:
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close"):
            tok.tag = f"h{min(6, int(tok.tag[1]) + heading_offset)}"
        for child in tok.children or []:
            if child.type == "image":
                url = resolve(str(child.attrGet("src"))) if resolve else None
                if url is None:  # keep the words, drop the reference
                    child.type, child.tag, child.children = "text", "", None
                    child.content = f"[{child.content}]"
                elif url.startswith("#"):  # shown elsewhere on the page: point there
                    alt = escapeHtml(child.content)
                    child.type, child.tag, child.children = "html_inline", "", None
                    child.content = f'<a href="{escapeHtml(url)}">{alt} (shown as named cards)</a>'
                else:
                    child.attrSet("src", url)
            elif child.type == "link_open" and _is_relative(str(child.attrGet("href") or "")):
                url = resolve(str(child.attrGet("href"))) if resolve else None
                child.attrSet("href", url or "#")


def _image(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    """An inline image with its alt text shown as a caption (every picture names itself)."""
    tok = tokens[idx]
    url = str(tok.attrGet("src"))
    # No alt text: the file name names it (the browser check counts unnamed images).
    alt = escapeHtml(tok.content or unquote(url.rsplit("/", 1)[-1]))
    src = escapeHtml(url)
    return (
        f'<span class="md-figure"><img src="{src}" alt="{alt}">'
        f'<span class="caption">{alt}</span></span>'
    )


def _renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", _image)
    md.add_render_rule("table_open", lambda *a: '<div class="table-wrap"><table>\n')
    md.add_render_rule("table_close", lambda *a: "</table></div>\n")
    return md


_MD = _renderer()


def markdown_to_html(text: str, heading_offset: int = 0, resolve: Resolver | None = None) -> str:
    """HTML of `text`; headings shifted by `heading_offset` levels, targets through `resolve`."""
    env: dict[str, Any] = {}
    tokens = _MD.parse(text, env)
    _rewrite(tokens, heading_offset, resolve)
    return _MD.renderer.render(tokens, _MD.options, env)
