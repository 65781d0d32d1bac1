"""The API reference (``docs/reference/*.md``) against the code: every public name a user gets
is on a page with a docstring, and nothing else is.

The pages are read as mkdocstrings reads them (``::: target`` and its ``members:`` list), the
code as mkdocstrings sees it (griffe: methods, properties, and the attributes set in
``__init__`` with the docstring under them).  Each class has a directive of its own with an
explicit members list, so a new public name fails here until it is documented, or named below
as one of the seams harpy's own layers use.
"""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import griffe
import pytest

import harpy
import harpy.asgi
import harpy.auth
import harpy.testing
import harpy.workers

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"

#: Public names that are seams between harpy's layers, not application API: used by the
#: connection layer, the hub, the ASGI adapter or the router, and kept off the reference.
SEAMS: dict[str, set[str]] = {
    "harpy.app.app.App": {
        "admit", "release",  # the connection layer's per-IP and global admission
        "run_startup_hooks", "run_shutdown_hooks",  # the ASGI adapter's lifespan
        "specs",  # what include() copies from a Router
        "hub", "http", "stats", "access_log", "match", "defaults", "encode_json", "json_loads",
        "handshake_timeout", "max_header_size", "max_connections", "max_connections_per_ip",
        "output_budget", "proxy_trust",  # the options as the connection layer reads them
    },
    "harpy.app.router.Router": {"specs"},
    "harpy.app.app.Route": {
        "allowed_origins", "authenticate", "data_factory", "deflate", "first_message_auth",
        "make_data", "on_message", "rate_burst", "subprotocols",
    },  # the options in the form the connection layer uses them
    "harpy.pubsub.groups.Connections": {"add", "discard", "receivers"},  # the hub's
}  # fmt: skip

#: The modules whose ``__all__`` is the public surface besides ``harpy`` itself.
MODULES = (harpy, harpy.auth, harpy.testing, harpy.asgi, harpy.workers)

#: Exported from a module but not application API (the same seams, by module).
MODULE_SEAMS = {
    "harpy.auth": {"Upgrading", "interpret", "resolve_authenticate"},  # the app layer's
    "harpy.asgi": {"ASGIConnection"},  # the adapter's connection, not a user object
}


@cache
def package() -> griffe.Module:
    return griffe.load("harpy", search_paths=[str(ROOT / "src")], resolve_aliases=True)


def resolve(path: str) -> griffe.Object:
    obj = package() if path == "harpy" else package()[path.removeprefix("harpy.")]
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def directives() -> list[tuple[str, str, list[str] | None]]:
    """(page, target, members or None) for every ``::: target`` of the reference."""
    return [(page, target, members) for page, target, members, _ in read_pages()]


def read_pages() -> list[tuple[str, str, list[str] | None, str]]:
    """(page, target, members or None, options text) for every ``::: target``."""
    found = []
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text()
        for match in re.finditer(r"^::: ([\w.]+)\n((?:[ \t]+.*\n|\n)*)", text, re.MULTILINE):
            body = match.group(2)
            members = None
            if "members:" in body:
                block = body.split("members:", 1)[1]
                members = re.findall(r"^\s+- (\w+)\s*$", block, flags=re.MULTILINE)
            found.append((page.name, match.group(1), members, body))
    return found


def documented() -> dict[str, list[str] | None]:
    """Canonical path -> members, for every directive target and every module member."""
    out: dict[str, list[str] | None] = {}
    for _, target, members in directives():
        obj = resolve(target)
        out[obj.path] = members
        if obj.is_module:
            for name in members or ():
                out[resolve(f"{target}.{name}").path] = None
    return out


#: What a class inherits from these is Python's, not harpy's.
BUILTIN_BASES = (object, int, str, tuple, dict, Mapping, BaseException, enum.Enum)


def public_members(cls: griffe.Object) -> set[str]:
    """The public names of ``cls`` as griffe reads them, and as ``dir()`` sees them at run
    time (slots that griffe misses), less what builtin bases bring."""
    module, _, name = cls.path.rpartition(".")
    runtime = getattr(importlib.import_module(module), name)
    inherited = {n for base in BUILTIN_BASES if issubclass(runtime, base) for n in dir(base)}
    if issubclass(runtime, enum.Enum):
        inherited -= set(runtime.__members__)
    names = (set(cls.all_members) | set(dir(runtime))) - inherited
    return {n for n in names if not n.startswith("_")}


def has_docstring(obj: griffe.Object | griffe.Alias) -> bool:
    return bool(obj.docstring and obj.docstring.value.strip())


def test_each_page_is_well_formed() -> None:
    for page, target, members in directives():
        obj = resolve(target)
        if not (obj.is_class or obj.is_module):
            continue  # a function or a constant: its docstring is all there is
        assert members is not None, f"{page}: ::: {target} needs an explicit members list"
        assert len(members) == len(set(members)), f"{page}: {target} lists a name twice"
        if obj.is_module:
            for name in members:
                member = resolve(f"{target}.{name}")
                # A class on a module's list would show every member it has, unchecked.
                assert not member.is_class or not public_members(member), (
                    f"{page}: give {target}.{name} a directive of its own"
                )


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_exported_name_is_in_the_reference(module: object) -> None:
    name = getattr(module, "__name__", "")
    pages = documented()
    missing = []
    for export in getattr(module, "__all__", ()):
        if export == "__version__" or export in MODULE_SEAMS.get(name, set()):
            continue
        if resolve(f"{name}.{export}").path not in pages:
            missing.append(export)
    assert not missing, f"not in docs/reference: {name}.{', '.join(missing)}"


def test_each_class_shows_exactly_its_public_names() -> None:
    pages = documented()
    for page, target, members in directives():
        cls = resolve(target)
        if not cls.is_class:
            continue
        seams = SEAMS.get(cls.path, set())
        # What a documented base class lists is documented there, once.
        for base in cls.mro():
            seams |= set(pages.get(base.path) or ()) | SEAMS.get(base.path, set())
        public = public_members(cls) - seams
        listed = set(members or ())
        assert not listed - public, f"{page}: {target} lists what it does not have or hides"
        assert not public - listed, f"{page}: {target} leaves out {sorted(public - listed)}"


def test_every_documented_name_has_a_docstring() -> None:
    for page, target, members in directives():
        obj = resolve(target)
        if not obj.is_module:
            assert has_docstring(obj), f"{page}: {target} has no docstring"
        for name in members or ():
            if obj.is_class and name not in obj.all_members:
                continue  # a slot griffe cannot see: test_slots_have_docstrings checks it
            member = obj.all_members[name] if obj.is_class else resolve(f"{target}.{name}")
            assert has_docstring(member), f"{page}: {target}.{name} has no docstring"


def test_the_seams_named_here_exist() -> None:
    """So that this file cannot keep a name the code has dropped."""
    for path, names in SEAMS.items():
        assert names <= public_members(resolve(path)), path


def test_listed_inherited_members_are_rendered() -> None:
    """mkdocstrings leaves out a listed member a class inherits unless told to show them."""
    for page, target, members, options in read_pages():
        cls = resolve(target)
        if cls.is_class and any(cls.all_members[n].inherited for n in members or ()):
            assert "inherited_members: true" in options, f"{page}: {target}"
