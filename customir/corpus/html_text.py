"""HTML to text: the page's title and its text in (heading, text) sections, for HTML files and
the HTML bodies of e-mails.

Real pages are often malformed: an unclosed heading or ``<title>`` ends where the next block
starts instead of swallowing the page, markup Python's parser asserts on is read the way a
browser reads it, and what the parser still cannot read is a counted skip.
"""

from __future__ import annotations

from html.parser import HTMLParser

from customir.corpus.files import SkipFile

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# elements whose start (and end) parts the text around them: table cells and list items do not
# run into each other ("ParisFrance")
_BLOCK = {"address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "div",
          "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr",
          "legend", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table",
          "tbody", "td", "tfoot", "th", "thead", "tr", "ul"}
_SKIP = {"script", "style", "noscript", "template"}
# an open heading or <title> ends where one of these starts (a <br> may sit inside a heading)
_ENDS_HEADING = (_BLOCK - {"br"}) | _HEADINGS | {"body"}


def html_sections(markup: str) -> tuple[str | None, list[tuple[str | None, str]]]:
    """(title, [(heading, text), ...]) of an HTML page; sections without text are left out.

    >>> html_sections("<title>T</title><h2>Intro<p>Paris</p><td>France")
    ('T', [('Intro', 'Paris\\nFrance')])
    """
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()  # the parser holds back text it cannot yet tell from an unfinished entity
    except AssertionError as exc:  # what Python's HTML parser raises on markup it cannot read
        raise SkipFile("unparseable_html", f"AssertionError: {exc}"[:200]) from None
    sections = [(heading, "".join(parts).strip()) for heading, parts in parser.sections]
    return parser.title, [(heading, text) for heading, text in sections if text]


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str | None, list[str]]] = [(None, [])]
        self._in: list[str] = []
        self._heading: list[str] | None = None  # text of the heading being read
        self._heading_tag = ""
        self._title: list[str] | None = None  # text of the <title> being read
        self._title_is_the_page_title = False
        self._page_title: str | None = None  # the first <title> outside an <svg>
        self._first_h1: str | None = None
        self._break_pending = False  # a block ended: the next text starts on a new line

    @property
    def title(self) -> str | None:
        return self._page_title or self._first_h1

    def parse_marked_section(self, i, report=1):
        # Python before 3.13 asserts on a marked section it does not know (``<![ if !vml ]>``,
        # ``<![x[abc]]>``); the HTML standard reads any such ``<![`` as a comment that ends at
        # the next ``>``.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i + 3)
            return -1 if end < 0 else end + 1

    def handle_starttag(self, tag, attrs):
        if tag in _ENDS_HEADING:
            # a block inside a heading that has no text yet wraps it (``<h2><div>Intro</div>``);
            # after its text, it starts the body of a heading left unclosed
            if tag in _HEADINGS or tag == "body" or "".join(self._heading or ()).strip():
                self._end_heading()
            self._end_title()
        self._in.append(tag)
        if tag in _HEADINGS:
            self._heading, self._heading_tag = [], tag
        elif tag == "title":
            self._title = []
            self._title_is_the_page_title = self._page_title is None and "svg" not in self._in
        elif tag in _BLOCK:
            self.sections[-1][1].append("\n")
            self._break_pending = False

    def handle_endtag(self, tag):
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass
        if tag in _HEADINGS:
            self._end_heading()
        elif tag in ("title", "head"):
            self._end_title()
        elif tag in _BLOCK:
            self._break_pending = True

    def handle_data(self, data):
        if any(t in _SKIP for t in self._in):
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self._title is not None:
            self._title.append(data)
        else:
            if self._break_pending and data.strip():
                self.sections[-1][1].append("\n")
                self._break_pending = False
            self.sections[-1][1].append(data)

    def close(self):
        super().close()
        self._end_title()
        if self._heading is not None:  # a heading still open at the end: keep it as text
            text, self._heading = "".join(self._heading), None
            self._break_pending = True
            self.handle_data(text)

    def _end_heading(self) -> None:
        if self._heading is None:
            return
        heading = " ".join("".join(self._heading).split())
        if heading:
            self.sections.append((heading, []))
            if self._heading_tag == "h1" and self._first_h1 is None:
                self._first_h1 = heading
        self._heading = None

    def _end_title(self) -> None:
        if self._title is None:
            return
        if self._title_is_the_page_title:
            self._page_title = " ".join("".join(self._title).split()) or None
        self._title = None
