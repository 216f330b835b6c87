"""The validation report: ONE self-contained HTML file (the outcome, per-source counts, the
failed expectations, then each batch's Great Expectations Data Docs page inlined).

Data Docs pages load bootstrap, jquery, font-awesome, vega, ... from public CDNs and their
logo from S3; in an air-gapped cluster they would show unstyled, and a report should not
call out anyway. ``self_contained`` rewrites a page so it references nothing: scripts and
``<link>`` elements go (the scripts need jquery; the stylesheets are CDN ones), external
images go, links that lead out of the page lose their ``href`` (the text stays), CSS
``url()``/``@import`` of a URL are dropped, and a small inline stylesheet keeps the tables
and the pass/fail marks readable.
"""

import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from validation.results import ValidationSummary

# attributes that make a browser fetch or navigate to a URL
_URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "background"}
_URL_ATTRIBUTES |= {"data", "xlink:href", "manifest", "ping", "cite", "longdesc"}
# CSS that fetches: url(...) of anything but a fragment or data:, and @import
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(?!\s*(?:#|data:))[^)]*?\1\s*\)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import\s+[^;]+;?", re.IGNORECASE)

# What bootstrap and font-awesome gave the Data Docs pages, as far as reading them needs.
DATA_DOCS_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em;color:#222}"
    "table{border-collapse:collapse;margin:4px 0 12px}"
    "td,th{border:1px solid #ddd;padding:3px 8px;vertical-align:top;text-align:left}"
    "th{background:#f4f4f4}ul{padding-left:1.4em}code,pre{background:#f6f8fa;padding:1px 3px}"
    ".card{border:1px solid #ddd;border-radius:4px;margin:0 0 12px}"
    ".card-header{background:#f4f4f4;padding:6px 10px;font-weight:bold}"
    ".card-body{padding:8px 10px}.sticky,.sticky-top{position:static!important}"
    ".modal,.d-none,.btn-group-toggle,.ge-walkthrough-modal,footer{display:none!important}"
    ".text-success{color:#1a7f37}.text-danger{color:#cf222e}.text-warning{color:#9a6700}"
    ".badge{border:1px solid #bbb;border-radius:3px;padding:0 4px;font-size:0.85em}"
    ".fas,.far,.fa{font-style:normal;font-weight:bold}"
    ".fa-check-circle::before,.fa-check::before{content:'\\2714'}"
    ".fa-times-circle::before,.fa-times::before{content:'\\2716'}"
    ".fa-exclamation-triangle::before{content:'\\26A0'}"
)

_DROPPED_ELEMENTS = {"script", "link", "base"}


def _is_external(url: str) -> bool:
    """Whether a URL leaves the page: anything but a ``#fragment`` or a ``data:`` URI
    (a relative path does not resolve inside an ``iframe srcdoc`` either)."""
    url = url.strip()
    return bool(url) and not url.startswith("#") and not url.lower().startswith("data:")


def _clean_css(css: str) -> str:
    return _CSS_URL.sub("none", _CSS_IMPORT.sub("", css))


class _SelfContained(HTMLParser):
    """Re-emits a page without what it would fetch; markup it keeps is copied verbatim."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skipping: str | None = None  # inside a dropped element (e.g. a script)
        self.in_style = False
        self.styled = False

    def handle_starttag(self, tag, attrs):
        self._tag(tag, attrs, self.get_starttag_text(), closed=False)

    def handle_startendtag(self, tag, attrs):
        self._tag(tag, attrs, self.get_starttag_text(), closed=True)

    def _tag(self, tag: str, attrs: list, raw: str, closed: bool):
        if self.skipping:
            return
        if tag in _DROPPED_ELEMENTS or (
            tag in ("img", "iframe", "embed", "object", "audio", "video", "source")
            and any(k in _URL_ATTRIBUTES and _is_external(v or "") for k, v in attrs)
        ):
            if not closed and tag not in ("link", "base", "img", "embed", "source"):
                self.skipping = tag  # void elements have no content to skip
            return
        kept = [
            (k, _clean_css(v) if k == "style" and v else v)
            for k, v in attrs
            if not (k in _URL_ATTRIBUTES and _is_external(v or "")) and not k.startswith("on")
        ]
        if kept != attrs:
            text = "".join(f" {k}" if v is None else f' {k}="{escape(v)}"' for k, v in kept)
            raw = f"<{tag}{text}{' /' if closed else ''}>"
        self.out.append(raw)
        self.in_style = tag == "style" and not closed

    def handle_endtag(self, tag):
        if self.skipping:
            self.skipping = None if tag == self.skipping else self.skipping
            return
        if tag in _DROPPED_ELEMENTS:
            return
        if tag == "head" and not self.styled:
            self.out.append(f"<style>{DATA_DOCS_STYLE}</style>")
            self.styled = True
        self.in_style = False
        self.out.append(f"</{tag}>")

    def handle_data(self, data):
        if not self.skipping:
            self.out.append(_clean_css(data) if self.in_style else data)

    def handle_entityref(self, name):
        if not self.skipping:
            self.out.append(f"&{name};")

    def handle_charref(self, name):
        if not self.skipping:
            self.out.append(f"&#{name};")

    def handle_comment(self, data):
        pass  # comments can hold conditional loads; nothing in them is needed

    def handle_decl(self, decl):
        self.out.append(f"<!{decl}>")

    def unknown_decl(self, data):
        pass

    def handle_pi(self, data):
        pass


def self_contained(page: str) -> str:
    """A Data Docs page (or any HTML page) rewritten to reference no external resource,
    with ``DATA_DOCS_STYLE`` inlined in its head (at its start when it has none)."""
    parser = _SelfContained()
    parser.feed(page)
    parser.close()
    out = "".join(parser.out)
    return out if parser.styled else f"<style>{DATA_DOCS_STYLE}</style>{out}"


def render_report(summary: ValidationSummary) -> str:
    """One HTML file: the outcome, per-source counts, the failed expectations, then each
    batch's Data Docs validation page, made self-contained, in an ``iframe srcdoc`` (its
    styles stay apart from the report's)."""
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{r.rows}</td><td>{r.evaluated}</td>"
        f"<td>{r.successful}</td><td>{r.failed}</td></tr>"
        for name, r in summary.sources.items()
    )
    failures = "".join(f"<li><code>{_esc(f)}</code></li>" for f in summary.failures)
    pages = "".join(_inlined(batch, page) for batch, page in summary.pages.items())
    status = "passed" if summary.success else "FAILED"
    body = (
        f"<p>Window [{_esc(summary.window_start)}, {_esc(summary.window_end)})</p>"
        "<table><tr><th>source</th><th>rows</th><th>expectations</th><th>successful</th>"
        f"<th>failed</th></tr>{rows}</table>"
        + (f"<h2>Failed expectations</h2><ul>{failures}</ul>" if failures else "")
        + pages
    )
    return _page(f"Data validation {status}", body)


def error_page(title: str, error: BaseException) -> str:
    """The report when validation could not run at all."""
    return _page(title, f"<pre>{_esc(error)}</pre>")


def _inlined(batch: str, page: Path) -> str:
    """A Data Docs page in an iframe of its own, so its styles stay apart."""
    doc = _esc(self_contained(page.read_text(encoding="utf-8")))
    return f'<h2>{_esc(batch)}</h2><iframe title="{_esc(batch)}" srcdoc="{doc}"></iframe>'


def _page(title: str, body: str) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}iframe{width:100%;height:80vh;border:1px solid #ccc}"
    )
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{style}</style></head><body><h1>{_esc(title)}</h1>{body}</body></html>\n"
    )


def _esc(value: Any) -> str:
    return escape(str(value), quote=True)
