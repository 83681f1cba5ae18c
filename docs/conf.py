"""Sphinx configuration (no network: no intersphinx).

The API reference has one page per public object, under the name to import it by. The section
pages ``docs/api/<module>.rst`` are written here, at every build, from the ``__all__`` of the
modules in :data:`API_PAGES`, so the reference follows the code; ``sphinx.ext.autosummary``
then writes each object's page into ``docs/api/generated/`` (both folders are ignored by git).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

project = "conprediff"
author = "conprediff developers"
copyright = "2026, conprediff developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as fields: no duplicate entries for NamedTuple fields
autodoc_default_options = {
    "members": True,
    "show-inheritance": False,
    # scikit-learn's metadata-routing helpers, generated on BaseEstimator subclasses
    "exclude-members": "set_fit_request,set_score_request,set_predict_request,"
    "set_transform_request,set_partial_fit_request",
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False
autosummary_generate = True
templates_path = ["api/_templates"]
html_theme = "furo"
html_title = "conprediff"
exclude_patterns = ["_build", "benchmarks/*_table.md", "api/_templates"]
suppress_warnings = ["myst.header"]

# ------------------------------------------------------------------------------ API pages
#: ``(page, title, modules)``: the page ``docs/api/<page>.rst`` lists the objects in each
#: module's ``__all__``. An object gets one page, under the first name listed here (the
#: top-level name before a subpackage's); later pages link to it.
API_PAGES: list[tuple[str, str, list[str]]] = [
    ("conprediff", "conprediff", ["conprediff"]),
    ("conprediff.backbones", "conprediff.backbones", ["conprediff.backbones"]),
    ("conprediff.autoencoders", "conprediff.autoencoders", ["conprediff.autoencoders"]),
    ("conprediff.text", "conprediff.text", ["conprediff.text"]),
    ("conprediff.interop", "conprediff.interop", ["conprediff.interop",
                                                  "conprediff.interop.scheduler"]),
    ("conprediff.context", "conprediff.context", ["conprediff.context"]),
    ("conprediff.wasserstein", "conprediff.wasserstein", ["conprediff.wasserstein"]),
    ("conprediff.schedules", "conprediff.schedules", ["conprediff.schedules"]),
    ("conprediff.diffusion", "conprediff.diffusion", ["conprediff.diffusion"]),
    ("conprediff.inpainting", "conprediff.inpainting", ["conprediff.inpainting"]),
    ("conprediff.evaluation", "conprediff.evaluation", ["conprediff.evaluation"]),
    ("conprediff.data", "conprediff.data", ["conprediff.data"]),
    # the training loop's own parts; training.setup is fit's wiring and training.data an old
    # import path of conprediff.ranges and the input checks
    ("conprediff.training", "conprediff.training", [
        "conprediff.training.loop", "conprediff.training.ema", "conprediff.training.checkpoint",
        "conprediff.training.distributed",
    ]),
    ("utilities", "Utilities", [
        "conprediff.spaces", "conprediff.export", "conprediff.plotting", "conprediff.layers",
        "conprediff.ranges", "conprediff.files", "conprediff.persistence",
        "conprediff.parameters", "conprediff.precision",
        "conprediff.serialization", "conprediff.cli",
    ]),
]
_PRIMITIVES = (bool, int, float, str, bytes, type(None))


def _key(obj: object, name: str) -> tuple:
    """Identity of a public object: the object itself, or its name and value for plain data."""
    obj = getattr(obj, "__func__", obj)  # a classmethod read from its class
    return (name, obj) if isinstance(obj, _PRIMITIVES) else ("id", id(obj))


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "Classes"
    return "Functions" if callable(obj) else "Constants"


def _heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _object_tables(module: str, owners: dict[tuple, str]) -> list[str]:
    """Tables of ``module.__all__`` by kind. An object documented on an earlier page follows in
    a table without stubs (``~conprediff.UNet``), linking there."""
    mod = importlib.import_module(module)
    groups: dict[str, tuple[list[str], list[str]]] = {
        kind: ([], []) for kind in ("Classes", "Functions", "Constants")
    }
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        owner = owners.setdefault(_key(obj, name), f"{module}.{name}")
        own, elsewhere = groups[_kind(obj)]
        own.append(name) if owner == f"{module}.{name}" else elsewhere.append(f"~{owner}")
    lines: list[str] = [f".. currentmodule:: {module}", ""]
    for kind, (own, elsewhere) in groups.items():
        if own or elsewhere:
            lines += [f".. rubric:: {kind}", ""]
        for names, stubs in ((own, True), (elsewhere, False)):
            if names:
                lines += [".. autosummary::"] + (["   :toctree: generated"] if stubs else [])
                lines += ["   :nosignatures:", ""] + [f"   {name}" for name in names] + [""]
    return lines


def _submodules(module: str, skip: set[str]) -> list[str]:
    """Public modules below a package, not under ``skip`` (the other pages' modules)."""
    mod = importlib.import_module(module)
    if not hasattr(mod, "__path__"):
        return []
    found = pkgutil.walk_packages(mod.__path__, module + ".", onerror=lambda name: None)
    names = sorted(info.name for info in found)
    skip = {s for s in skip if not module.startswith(s + ".") and s != module}  # not ancestors
    return [
        n for n in names
        if not any(p.startswith("_") for p in n.split("."))
        and not any(n == s or n.startswith(s + ".") for s in skip)
    ]


def _page(title: str, modules: list[str], owners: dict[tuple, str], skip: set[str]) -> str:
    """One section page: each module's docstring and tables, then its submodules' docstrings."""
    lines = [".. This page is written by docs/conf.py at every build: do not edit.", ""]
    lines += _heading(title, "=")
    if title.startswith("conprediff") and title not in modules:  # a namespace package
        lines += [f".. py:module:: {title}", ""]
    for module in modules:
        if len(modules) > 1:
            lines += _heading(f"``{module}``", "-")
        lines += [f".. automodule:: {module}", "   :no-members:", ""]
        lines += _object_tables(module, owners)
    subs = [s for m in modules for s in _submodules(m, skip)]
    if subs:
        lines += _heading("Modules", "-")
        documented = set(owners.values())
        for sub in subs:  # a module named as a function it defines is indexed as the function
            lines += _heading(f"``{sub}``", "~")
            lines += [f".. automodule:: {sub}", "   :no-members:"]
            lines += ["   :no-index:", ""] if sub in documented else [""]
    return "\n".join(lines)


def write_api_pages(folder: Path = HERE / "api") -> None:
    """Write ``folder/<page>.rst`` for every entry of :data:`API_PAGES` (only when changed)."""
    owners: dict[tuple, str] = {}
    skip = {m for _, _, modules in API_PAGES for m in modules} | {"conprediff.training"}
    wanted = set()
    for page, title, modules in API_PAGES:
        text = _page(title, modules, owners, skip)
        path = folder / f"{page}.rst"
        wanted.add(path)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    for stale in set(folder.glob("*.rst")) - wanted:
        stale.unlink()


write_api_pages()


# ------------------------------------------------------------- references through public names
def _import_target(target: str) -> object | None:
    """The object a dotted name points at (a module, then attributes), or None."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # not a module, or one that cannot be imported
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


_DOCUMENTED: dict[tuple, str] = {}


def _documented(env) -> dict[tuple, str]:
    """Every documented Python object, by identity, to the name it is documented under."""
    if not _DOCUMENTED:
        for name, entry in env.get_domain("py").objects.items():
            if entry.aliased or not name.startswith("conprediff"):
                continue
            obj = _import_target(name)
            if obj is not None:
                _DOCUMENTED.setdefault(_key(obj, name.rpartition(".")[2]), name)
    return _DOCUMENTED


def resolve_defining_path(app, env, node, contnode):
    """Resolve ``conprediff.<module>.<name>`` to the page of the same object's public name.

    Docstrings and pages refer to objects by the module that defines them (e.g.
    ``conprediff.estimator.ConPreDiffModel.fit``); the reference documents them under the names
    to import them by (``conprediff.ConPreDiffModel.fit``).
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    if "." not in target and node.get("py:module"):  # a name of the current module
        target = f"{node['py:module']}.{target}"
    if not target.startswith("conprediff."):
        return None
    obj = _import_target(target)
    if obj is None:
        return None
    name = _documented(env).get(_key(obj, target.rpartition(".")[2]))
    if name is None or name == target:
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
    )


# ------------------------------------------------------------------- constants of builtin types
def _describe(value: object) -> str:
    """A constant's value in reST: a dict of callables as links to them, else its repr."""
    if isinstance(value, dict) and value and all(callable(v) for v in value.values()):
        return ", ".join(
            f"``{k!r}``: :obj:`~{v.__module__}.{v.__qualname__}`" for k, v in value.items()
        )
    return f"``{value!r}``"


def describe_constant(app, what, name, obj, options, lines):
    """A constant of a builtin type shows its value, not its type's docstring (``dict(...)``)."""
    if what not in ("data", "attribute") or type(obj).__module__ != "builtins" or not lines:
        return
    type_doc = type(obj).__doc__
    if isinstance(type_doc, str) and lines[0].strip() and type_doc.strip().startswith(
        lines[0].strip()
    ):
        lines[:] = [f"Value: {_describe(obj)}", ""]


def setup(app):
    app.connect("autodoc-process-docstring", describe_constant)
    app.connect("env-updated", lambda app, env: _DOCUMENTED.clear())
    app.connect("missing-reference", resolve_defining_path)
