"""Local paths for input names (``ocrpipe get``): safe on POSIX, macOS and Windows, and
checked as a whole plan so that no two documents share a file. Pure: no I/O.

Each ``/``-separated segment of an input name becomes one folder or file name, as typed,
except what a disk could refuse or read as something else, which is written ``%XX`` (its
UTF-8 bytes), like the output bucket's keys (README, "Output layout"):

* control characters, and ``< > : " \\ | ? *``, which Windows refuses (so ``..\\x`` and
  ``C:`` never act as a parent folder or a drive);
* a trailing ``.`` or space, which Windows drops;
* an empty, ``.`` or ``..`` segment (``%``, ``%2E``, ``%2E%2E``): nothing climbs out;
* the first letter of a name Windows keeps for a device (``CON``, ``nul.txt``, ``COM1``).

A segment over :data:`MAX_SEGMENT_BYTES` keeps its head and gets ``~`` and a hash of the
whole segment. The mapping is the same on every system, so one bucket gives one tree.

Two paths *clash* when some disk takes them for one file: equal once Unicode normalization
and letter case are ignored (macOS and Windows disks ignore case; macOS also the Unicode
form), or one is a file where the other needs a folder. :func:`find_clashes` finds them
over every document of a plan, and each document can name folders that only it may write
into (its ``pages/``).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

# Room for what is added to a segment ("~" + hash, ".json") under the 255 bytes of ext4 and
# APFS (NTFS counts 255 UTF-16 units, never more than the UTF-8 bytes).
MAX_SEGMENT_BYTES = 200
HASH_CHARS = 8
WINDOWS_FORBIDDEN = frozenset('<>:"\\|?*')
WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in (*"0123456789", "¹", "²", "³")}
)


def name_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _must_escape(char: str) -> bool:
    code = ord(char)
    return char in WINDOWS_FORBIDDEN or code < 0x20 or 0x7F <= code <= 0x9F


def safe_segment(segment: str) -> str:
    """One folder or file name that every disk stores as given (see the module's list)."""
    if segment in ("", ".", ".."):
        return "%2E" * len(segment) or "%"
    chars = [_escape(c) if _must_escape(c) else c for c in segment]
    end = len(chars)
    while end and chars[end - 1] in (".", " "):
        end -= 1
    chars[end:] = [_escape(c) for c in chars[end:]]
    if segment.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_DEVICES:
        chars[0] = _escape(chars[0])
    safe = "".join(chars)
    if len(safe.encode()) <= MAX_SEGMENT_BYTES:
        return safe
    room = MAX_SEGMENT_BYTES - HASH_CHARS - 1
    head = safe.encode()[:room].decode(errors="ignore")
    cut = head.rfind("%", len(head) - 2)  # an escape cut in half
    head = (head[:cut] if cut >= 0 else head).rstrip(". ") or "%"
    return f"{head}~{name_hash(segment)}"


def _split_extension(segment: str) -> tuple[str, str]:
    """``'q1.pdf'`` -> ``('q1', '.pdf')``; a leading dot is not an extension."""
    dot = segment.rfind(".")
    return (segment[:dot], segment[dot:]) if 0 < dot < len(segment) - 1 else (segment, "")


LEVELS = 3  # 0: name minus extension, 1: whole name, 2: whole name + "~" + hash


def stem(name: str, level: int) -> PurePosixPath:
    """The local path (no ``.md`` yet) of input ``name`` at a disambiguation ``level``."""
    *folders, last = name.split("/")
    if level == 0:
        last = _split_extension(last)[0]
    if level == 2:
        last = f"{safe_segment(last)}~{name_hash(name)}"
        return PurePosixPath(*map(safe_segment, folders), last)
    return PurePosixPath(*map(safe_segment, [*folders, last]))


def next_level(name: str, level: int) -> int:
    """The next level that changes the path (a name without extension skips level 1)."""
    following = level + 1
    if following == 1 and stem(name, 0) == stem(name, 1):
        following = 2
    return following


def plain(name: str) -> PurePosixPath:
    """The path as typed, minus extension: what :func:`stem` gives when nothing is
    escaped or shortened."""
    *folders, last = name.split("/")
    return PurePosixPath(*folders, _split_extension(last)[0])


def fold(path: PurePosixPath) -> str:
    """One key per file a case- and normalization-insensitive disk can hold."""
    text = unicodedata.normalize("NFD", path.as_posix())
    return unicodedata.normalize("NFD", text.casefold())


@dataclass(frozen=True)
class Layout:
    """What one document writes: its files, and the folders only it may write into."""

    files: tuple[PurePosixPath, ...]
    owned: tuple[PurePosixPath, ...] = ()


@dataclass(frozen=True)
class Clash:
    other: str  # the other document's name
    why: str  # a sentence naming both paths


def find_clashes(layouts: Mapping[str, Layout]) -> dict[str, Clash]:
    """Every document that shares a file (or a file and a folder) with another, with the
    first clash found for it. Deterministic: documents are taken in name order."""
    files: dict[str, tuple[str, PurePosixPath]] = {}
    folders: dict[str, list[tuple[str, PurePosixPath]]] = {}
    owned: dict[str, tuple[str, PurePosixPath]] = {}
    found: dict[str, Clash] = {}

    def clash(a: str, b: str, why: str) -> None:
        found.setdefault(a, Clash(b, why))
        found.setdefault(b, Clash(a, why))

    for name in sorted(layouts):
        layout = layouts[name]
        for path in layout.files:
            key = fold(path)
            if key in files and files[key][0] != name:
                other, other_path = files[key]
                if other_path == path:
                    why = f"'{name}' and '{other}' would both be {path}"
                else:
                    why = (
                        f"{path} ('{name}') and {other_path} ('{other}') are one file on"
                        " disks that ignore letter case or Unicode form"
                    )
                clash(name, other, why)
            files.setdefault(key, (name, path))
            for parent in _parents(path):
                folders.setdefault(fold(parent), []).append((name, path))
        for folder in layout.owned:
            key = fold(folder)
            if key in owned and owned[key][0] != name:
                clash(name, owned[key][0], f"'{name}' and '{owned[key][0]}' both need {folder}/")
            owned.setdefault(key, (name, folder))
    for key, (name, path) in files.items():
        for other, other_path in folders.get(key, ()):
            if other != name:
                why = f"{path} ('{name}') is a file where {other_path} ('{other}') needs a folder"
                clash(name, other, why)
    for name in sorted(layouts):
        for path in layouts[name].files:
            for parent in _parents(path):
                holder = owned.get(fold(parent))
                if holder is not None and holder[0] != name:
                    why = f"{path} ('{name}') would be inside {holder[1]}/ ('{holder[0]}')"
                    clash(name, holder[0], why)
    return found


def _parents(path: PurePosixPath) -> Iterable[PurePosixPath]:
    return (p for p in path.parents if p != PurePosixPath("."))
