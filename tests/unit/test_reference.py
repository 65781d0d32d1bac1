"""The API reference (``docs/reference/*.md``) against the code: every public name a user gets
is on a page with a docstring, and nothing else is.

The pages are read as mkdocstrings reads them (``::: target`` and its ``members:`` list), the
code as mkdocstrings sees it (griffe: methods, properties, and the attributes set in
``__init__`` with the docstring under them).  Each class has a directive of its own with an
explicit members list, so a new public name fails here until it is documented.  The names
only harpy's own layers use (the seams between them) are documented too, in a second directive
for the same target under the page's "For harpy's own layers" heading: nothing is exempt.
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

#: The modules whose ``__all__`` is the public surface besides ``harpy`` itself.
MODULES = (harpy, harpy.auth, harpy.testing, harpy.asgi, harpy.workers)

#: The title of the part of a page for the public names harpy's own layers use (the seams
#: between them): listed and checked like the rest, apart from the application API.
SEAMS_HEADING = "## For harpy's own layers"


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
        if members is None or out.get(obj.path) is None:
            out[obj.path] = members
        else:  # the application part and the seams part of one target
            out[obj.path] = [*(out[obj.path] or ()), *members]
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
    listed: dict[str, list[str]] = {}
    for page, target, members in directives():
        obj = resolve(target)
        if not (obj.is_class or obj.is_module):
            continue  # a function or a constant: its docstring is all there is
        assert members is not None, f"{page}: ::: {target} needs an explicit members list"
        assert len(members) == len(set(members)), f"{page}: {target} lists a name twice"
        twice = set(members) & set(listed.get(obj.path, ()))
        assert not twice, f"{page}: {target} lists {sorted(twice)} in two directives"
        listed.setdefault(obj.path, []).extend(members)
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
        if export == "__version__":
            continue
        if resolve(f"{name}.{export}").path not in pages:
            missing.append(export)
    assert not missing, f"not in docs/reference: {name}.{', '.join(missing)}"


def test_each_class_shows_exactly_its_public_names() -> None:
    pages = documented()
    for path, members in pages.items():
        cls = resolve(path)
        if not cls.is_class:
            continue
        # What a documented base class lists is documented there, once.
        elsewhere: set[str] = set()
        for base in cls.mro():
            elsewhere |= set(pages.get(base.path) or ())
        public = public_members(cls) - elsewhere
        listed = set(members or ())
        assert not listed - public, f"{path} lists what it does not have or hides"
        assert not public - listed, f"{path} leaves out {sorted(public - listed)}"


def test_every_documented_name_has_a_docstring() -> None:
    for page, target, members in directives():
        obj = resolve(target)
        if not obj.is_module:
            assert has_docstring(obj), f"{page}: {target} has no docstring"
        for name in members or ():
            if obj.is_class:
                # A name griffe cannot see (a slot set by unpacking) has no docstring for it.
                assert name in obj.all_members, f"{page}: {target}.{name} is invisible to griffe"
                member = obj.all_members[name]
            else:
                member = resolve(f"{target}.{name}")
            assert has_docstring(member), f"{page}: {target}.{name} has no docstring"


def test_a_target_twice_is_application_api_then_seams() -> None:
    """A second directive for one target is the seams part: under its own heading, after the
    application part, and rendered without a second heading (one anchor per name)."""
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text()
        seen: set[str] = set()
        for match in re.finditer(r"^::: ([\w.]+)\n((?:[ \t]+.*\n|\n)*)", text, re.MULTILINE):
            target, options = match.group(1), match.group(2)
            if target in seen:
                before = text[: match.start()]
                assert SEAMS_HEADING in before, f"{page.name}: ::: {target} twice, no seams part"
                assert "show_root_heading: false" in options, f"{page.name}: {target} twice"
                assert "show_root_toc_entry: false" in options, f"{page.name}: {target} twice"
            seen.add(target)


def test_listed_inherited_members_are_rendered() -> None:
    """mkdocstrings leaves out a listed member a class inherits unless told to show them."""
    for page, target, members, options in read_pages():
        cls = resolve(target)
        if cls.is_class and any(cls.all_members[n].inherited for n in members or ()):
            assert "inherited_members: true" in options, f"{page}: {target}"
