"""A small Sphinx extension that keeps the built book self-contained and its console clean.

Loaded through ``sphinx.local_extensions`` in ``_config.yml``. On every page it

- drops the duplicates of inline ``<script>`` snippets: Sphinx 7.4 adds a snippet registered
  after the builder started (sphinx-togglebutton's, sphinx-thebe's) twice, once with the file
  name ``None`` and once with ``""``, and sphinx-thebe's second ``const THEBE_JS_URL = ...``
  is a JavaScript error ("Identifier has already been declared") on every page;
- removes the Font Awesome 4 stylesheet that matplotlib's ``to_jshtml`` animations link from a
  CDN: the theme already ships Font Awesome, whose script draws the animation's button icons
  (``fa fa-play`` ...), so the page needs no request outside the site.

- on pages with embedded widgets, points require.js at the vendored widget manager (its icon
  fonts load relative to its module path, which is otherwise the page's own folder), and gives
  MathJax 3 the ``MathJax.Hub.Queue`` entry point the widgets' label typesetting still calls
  (MathJax 2's; without it every labelled widget throws a TypeError).

MathJax, require.js and the widget manager are vendored (tools/vendor_assets.py).
"""

from __future__ import annotations

import re

# <link rel="stylesheet" href="https://.../font-awesome/4.x/css/font-awesome.min.css"> (any CDN)
CDN_FONT_AWESOME = re.compile(
    r"""<link\b[^>]*\bhref=["'](?:https?:)?//[^"']*font-?awesome[^"']*\.css["'][^>]*>\s*""",
    re.IGNORECASE,
)


def _script_key(script) -> tuple:
    """What makes two script entries the same tag (None and "" are both "no file")."""
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""
    return (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))


WIDGET_MANAGER = "npm/@jupyter-widgets/html-manager"

# ipywidgets' typeset(element) calls MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]) when
# window.MathJax exists. Give every object assigned to window.MathJax (Sphinx's configuration,
# then MathJax 3 itself) a Hub whose Queue typesets with MathJax 3 once it has started.
MATHJAX2_QUEUE_SHIM = """(function () {
  function typeset(element, tries) {
    var M = window.MathJax;
    if (M && M.startup && M.startup.promise) {
      M.startup.promise.then(function () { return M.typesetPromise([element]); });
    } else if (tries < 200) {
      setTimeout(function () { typeset(element, tries + 1); }, 50);
    }
  }
  var hub = {Queue: function () {
    for (var i = 0; i < arguments.length; i++) {
      var job = arguments[i];
      if (Array.isArray(job) && job[0] === "Typeset" && job[2]) typeset(job[2], 0);
    }
  }};
  var current = window.MathJax;
  if (current && typeof current === "object" && !current.Hub) current.Hub = hub;
  Object.defineProperty(window, "MathJax", {configurable: true,
    get: function () { return current; },
    set: function (value) {
      current = value;
      if (value && typeof value === "object" && !value.Hub) value.Hub = hub;
    }});
})();"""


def _inline_script(app, context, body: str):
    """A new inline-script entry for this page (through the builder's public add_js_file)."""
    app.builder.add_js_file(None, body=body)
    scripts = context["script_files"]
    if scripts and (getattr(scripts[-1], "attributes", {}) or {}).get("body") == body:
        return scripts.pop()
    return None


def clean_page(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen, unique = set(), []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                unique.append(script)
        manager = [i for i, s in enumerate(unique) if WIDGET_MANAGER in _script_key(s)[0]]
        if manager:
            path = context["pathto"](f"_static/{WIDGET_MANAGER}", 1)
            config = f'require.config({{paths: {{"@jupyter-widgets/html-manager": "{path}"}}}});'
            extra = [_inline_script(app, context, MATHJAX2_QUEUE_SHIM)]
            extra.append(_inline_script(app, context, config))
            unique[manager[0] : manager[0]] = [s for s in extra if s is not None]
        context["script_files"] = unique  # a new list: the builder restores its own per page
    body = context.get("body")
    if body:
        context["body"] = CDN_FONT_AWESOME.sub("", body)


def setup(app):
    # after myst-nb (priority 500), which adds the widget scripts of the page in this event
    app.connect("html-page-context", clean_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
