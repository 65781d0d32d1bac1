"""Plain HTTP answers beside the WebSockets: files from a folder, by the rules of RFC 9110.

The server layer's part of the HTTP side: find a file for a request path without ever leaving
the folder, and make its response (content type, ``ETag``, 304, ``HEAD``).  Which paths go
here is the app's decision; :meth:`~harpy.server.Connection.respond` writes the answer and
closes the connection (no keep-alive).  Files are read in the loop's default executor, so a
large file does not block the other connections.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..exceptions import ConfigurationError

__all__ = ["Response", "StaticFiles"]


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer: ``content_length`` differs from ``len(body)`` only for HEAD."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_length: int | None = None


_NOT_FOUND = Response(404, [("Content-Type", "text/plain; charset=utf-8")], b"Not Found\n")
_METHODS = ("GET", "HEAD")


class StaticFiles:
    """The files under ``directory``, served read-only.

    A path that would leave the folder (``..``, ``%2e%2e``, a backslash, NUL, a symlink whose
    target is outside) is answered 404, like a missing file; a directory is answered with its
    ``index.html`` (a directory path without its final ``/`` is redirected to it).
    """

    __slots__ = ("directory", "index")

    def __init__(self, directory: str | os.PathLike[str], index: str = "index.html") -> None:
        root = Path(directory)
        if not root.is_dir():
            raise ConfigurationError(f"static folder {str(directory)!r} is not a directory")
        #: The folder, symlinks resolved: every file served is inside it.
        self.directory = root.resolve()
        self.index = index

    def find(self, path: str) -> Path | None:
        """The file (or directory) for ``path``, the request path below the mount point,
        still percent-encoded; None when there is none or it would leave the folder."""
        if "\\" in path or "\x00" in path:
            return None
        decoded = unquote(path, errors="strict") if "%" in path else path
        if "\\" in decoded or "\x00" in decoded:
            return None
        parts = [part for part in decoded.split("/") if part]
        if any(part in (".", "..") for part in parts):
            return None
        candidate = self.directory.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        if real != self.directory and self.directory not in real.parents:
            return None  # a symlink out of the folder
        return real

    async def respond(
        self, method: str, path: str, request_path: str, query: str, if_none_match: str | None
    ) -> Response:
        """The answer to ``method`` for ``path`` (the part of ``request_path`` below the mount
        point, as requested); the file system is only touched in the executor."""
        if method not in _METHODS:
            return Response(
                405,
                [("Allow", ", ".join(_METHODS)), ("Content-Type", "text/plain; charset=utf-8")],
                b"Method Not Allowed\n",
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, self._answer, method, path, request_path, query, if_none_match
        )

    def _answer(
        self, method: str, path: str, request_path: str, query: str, if_none_match: str | None
    ) -> Response:
        try:
            found = self.find(path)
        except UnicodeDecodeError:
            found = None
        if found is None:
            return _NOT_FOUND
        if found.is_dir():
            if not request_path.endswith("/"):
                # Relative links in the index must resolve inside the directory.
                last = request_path.rsplit("/", 1)[-1]
                return Response(301, [("Location", last + "/" + (f"?{query}" if query else ""))])
            index = self.find(path.rstrip("/") + "/" + self.index)
            if index is None:
                return _NOT_FOUND
            found = index
        try:
            size, mtime_ns, body = _read(found, method == "HEAD")
        except OSError:
            return _NOT_FOUND
        etag = f'"{mtime_ns:x}-{size:x}"'
        headers = [("ETag", etag)]
        if if_none_match is not None and _matches(if_none_match, etag):
            return Response(304, headers, b"", 0)
        headers.append(("Content-Type", _content_type(found.name)))
        return Response(200, headers, body, size)


def _read(path: Path, head_only: bool) -> tuple[int, int, bytes]:
    """Size, modification time and (for GET) the contents of a regular file."""
    with path.open("rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(str(path))
        body = b"" if head_only else file.read()
    return info.st_size, info.st_mtime_ns, body


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 13.1.2: ``*`` or any listed tag, compared weakly."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def _content_type(name: str) -> str:
    kind, _ = mimetypes.guess_type(name)
    if kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        return f"{kind}; charset=utf-8"
    return kind
