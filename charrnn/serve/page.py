"""The page: static/page.html with static/page.css and static/page.js inlined, one file that
needs nothing from the network (no CDN, no build step). With `data` (an /api/activations
answer) it is the self-contained activation view of `charrnn activations --out`."""
import json
from importlib import resources

ASSETS = ("page.html", "page.css", "page.js")


def asset(name) -> str:
    """A file of the package's static/ folder, as text."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def render_page(data=None) -> str:
    """The page as one HTML string; `data` embedded as JSON (null: the live page that asks the API)."""
    html, style, script = (asset(name) for name in ASSETS)
    # JSON inside <script>: escape "<" so that no "</script>" or "<!--" can end or bend the element
    embedded = json.dumps(data, ensure_ascii=True, allow_nan=False).replace("<", "\\u003c")
    for mark, text in (("/*STYLE*/", style), ("/*SCRIPT*/", script), ("/*DATA*/", embedded)):
        head, _, tail = html.partition(mark)
        html = head + text + tail
    return html
