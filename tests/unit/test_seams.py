"""The seams of the connection layer, read from the code: what users see of a connection,
what a transport may use of the connection base, and who moves ``ready_state``."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import harpy
from harpy._compiled import build_copies, is_compiled
from harpy.asgi import ASGIConnection
from harpy.server import Connection, FramedConnection, MeteredConnection
from harpy.server.connection import SUBCLASS_INTERFACE, TRANSPORT_INTERFACE

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "harpy"
REFERENCE = ROOT / "docs" / "reference" / "websocket.md"
TRANSPORTS = (FramedConnection, ASGIConnection)
#: What a build copies for Cython to compile (setup.py): not sources of their own.
COPIES = build_copies()


def documented_members() -> list[str]:
    text = REFERENCE.read_text()
    block = text.split("members:", 1)[1]
    return re.findall(r"^\s+- (\w+)\s*$", block, flags=re.MULTILINE)


def test_a_handlers_ws_shows_exactly_the_documented_api() -> None:
    public = {name for name in dir(harpy.WebSocket) if not name.startswith("_")}
    # Instance attributes live in __slots__ and show up in dir() as member descriptors too.
    documented = documented_members()
    assert len(documented) == len(set(documented)), "a name is listed twice"
    assert public == set(documented)


def test_plumbing_is_not_among_the_public_names() -> None:
    plumbing = {
        "accept", "refuse", "respond", "check_upgrade", "send_message", "send_control",
        "queue_message", "flush", "on_timer", "timer_slot", "transport", "data_received",
        "connection_made", "connection_lost", "pause_writing", "resume_writing", "abort",
        "bind", "request", "codec",
    }  # fmt: skip
    assert not plumbing & set(dir(harpy.WebSocket))


def test_every_documented_method_and_property_has_a_docstring() -> None:
    for name in documented_members():
        member = inspect.getattr_static(harpy.WebSocket, name)
        if type(member).__name__ == "member_descriptor":
            continue  # a slot set in __init__: its docstring is the string after it there
        doc = member.fget.__doc__ if isinstance(member, property) else member.__doc__
        assert doc and doc.strip(), f"WebSocket.{name} has no docstring"


def test_the_instance_attributes_have_docstrings_in_init() -> None:
    source = inspect.getsource(harpy.WebSocket.__init__)
    slots = [name for name in documented_members() if name in harpy.WebSocket.__slots__]
    assert slots == ["auth", "subprotocol"]  # data and params: properties, made on first use
    for name in slots:
        assert re.search(rf'self\.{name}\b[^\n]*\n\s+"""', source), name


def _class_source(cls: type) -> ast.ClassDef:
    """The class's definition, read from its ``.py`` source (also when the class in use was
    compiled from it: harpy/_compiled.py)."""
    module = sys.modules[cls.__module__]
    path = Path(module.__file__ or "")
    if is_compiled(module):  # harpy/server/_cframed.*.so was compiled from framed.py
        path = path.parent / (path.name.split(".", 1)[0].removeprefix("_c") + ".py")
    tree = ast.parse(path.read_text())
    return next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__
    )


def _private_uses(cls: type) -> set[str]:
    """Every ``self._name`` the class's own body reads, writes or calls."""
    tree = _class_source(cls)
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def _slots(tree: ast.ClassDef) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def _defined(tree: ast.ClassDef) -> set[str]:
    """The methods and properties the class's body defines."""
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _own_private_names(cls: type) -> set[str]:
    tree = _class_source(cls)
    names = _slots(tree) | _defined(tree)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_transports_use_only_the_named_interface_of_the_base() -> None:
    base = _own_private_names(Connection)
    assert set(SUBCLASS_INTERFACE) <= base | set(TRANSPORT_INTERFACE)
    for cls in (*TRANSPORTS, MeteredConnection):
        used = _private_uses(cls) & base
        assert used <= set(SUBCLASS_INTERFACE), (cls.__name__, used - set(SUBCLASS_INTERFACE))


def test_each_transport_implements_the_transport_interface() -> None:
    for cls in TRANSPORTS:
        defined = _defined(_class_source(cls))
        for name in TRANSPORT_INTERFACE:
            assert name in defined, f"{cls.__name__} does not implement {name}"


def test_neither_transport_builds_on_the_other() -> None:
    assert not issubclass(ASGIConnection, FramedConnection)
    assert not issubclass(FramedConnection, ASGIConnection)
    assert ASGIConnection.__mro__[1] is Connection


def test_ready_state_changes_in_one_place() -> None:
    writers = []
    for path in SRC.rglob("*.py"):
        if path.name in COPIES:
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
                )
                if any(isinstance(t, ast.Attribute) and t.attr == "ready_state" for t in targets):
                    writers.append(f"{path.relative_to(SRC)}:{func.name}")
    assert sorted(writers) == ["server/connection.py:__init__", "server/connection.py:_enter"]


def test_an_illegal_state_step_raises_naming_both_states() -> None:
    conn = FramedConnection.__new__(FramedConnection)
    conn.ready_state = harpy.ReadyState.CLOSED
    try:
        conn._enter(harpy.ReadyState.OPEN)
    except harpy.InvalidState as exc:
        assert "CLOSED" in str(exc) and "OPEN" in str(exc)
    else:
        raise AssertionError("CLOSED -> OPEN was allowed")
