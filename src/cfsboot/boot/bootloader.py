"""Boot entries found in an image tree (composefs-rs ``bootloader.rs``
``get_boot_resources``), plus the tree path lookups composefs-rs uses.

Three kinds of entries, discovered read-only, in this order:

* Type 1: ``/boot/loader/entries/*.conf``; every ``linux``/``initrd``/``efi``
  path of an entry must name a regular file (resolved from the image root);
* Type 2: ``*.efi`` files anywhere below ``/boot/EFI/Linux`` and below each
  ``/usr/lib/modules/<kver>/`` directory (UKIs and addons);
* ``/usr/lib/modules/<kver>/vmlinuz`` (+ optional ``initramfs.img``); the
  ``<kver>`` of such a kernel must be UTF-8.

Any inconsistency is a ``BootEntryError``: ``compute-composefs-digest``
refuses such an image.  Path lookups follow Rust ``Path::components``
(repeated and trailing ``/`` ignored, interior ``.`` dropped, a leading
``.`` or any ``..`` is an invalid file name) and never follow symlinks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cfsboot.errors import CfsError
from cfsboot.tree.model import Directory, External, Inline, Leaf, Sparse


class BootEntryError(CfsError):
    """The image's boot entries (or a path looked up in the tree) are invalid."""


ReadFile = Callable[[Leaf], bytes]

_ROOT = b"/"
_CUR = b"."
_PARENT = b".."


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def path_components(path: bytes) -> list[bytes]:
    """Rust ``Path::components``: ``/`` (root), ``.`` (only leading), ``..``
    and normal names."""
    out: list[bytes] = [_ROOT] if path.startswith(b"/") else []
    for i, part in enumerate(path.split(b"/")):
        if part == b"" or (part == _CUR and (i > 0 or out)):
            continue
        out.append(part)
    return out


def get_directory_opt(d: Directory, path: bytes) -> Directory | None:
    """composefs-rs ``Directory::get_directory_opt``: None when a component is
    missing; an error when one is not a directory or is ``.``/``..``."""
    for comp in path_components(path):
        if comp == _ROOT:
            continue
        if comp in (_CUR, _PARENT):
            raise BootEntryError(f"invalid filename {_show(path)}")
        child = d.entries.get(comp)
        if child is None:
            return None
        if not isinstance(child, Directory):
            raise BootEntryError(f"directory entry {_show(comp)} is not a subdirectory")
        d = child
    return d


def get_directory(d: Directory, path: bytes) -> Directory:
    found = get_directory_opt(d, path)
    if found is None:
        raise BootEntryError(f"directory {_show(path)} does not exist")
    return found


def get_file_opt(d: Directory, name: bytes) -> Leaf | None:
    """The regular-file leaf ``name`` directly in ``d`` (None if absent);
    a directory or a non-regular file there is an error."""
    child = d.entries.get(name)
    if child is None:
        return None
    if isinstance(child, Directory):
        raise BootEntryError(f"directory entry {_show(name)} is a directory")
    if not isinstance(child.content, (Inline, External, Sparse)):
        raise BootEntryError(f"directory entry {_show(name)} is not a regular file")
    return child


def get_file(d: Directory, name: bytes) -> Leaf:
    leaf = get_file_opt(d, name)
    if leaf is None:
        raise BootEntryError(f"directory entry {_show(name)} does not exist")
    return leaf


def resolve_file(root: Directory, path: bytes) -> Leaf:
    """composefs-rs ``split`` + ``get_file``: the regular file at ``path``."""
    comps = path_components(path)
    if not comps or comps[-1] in (_ROOT, _CUR, _PARENT):
        raise BootEntryError(f"invalid filename {_show(path)}")
    parent = b"/".join(c for c in comps[:-1] if c != _ROOT)
    if _CUR in comps[:-1] or _PARENT in comps[:-1]:
        raise BootEntryError(f"invalid filename {_show(path)}")
    return get_file(get_directory(root, parent), comps[-1])


# ---- Type 1 entries ---------------------------------------------------------------

def _is_ascii_whitespace(ch: str) -> bool:
    return ch in " \t\n\x0c\r"  # Rust char::is_ascii_whitespace (no \v)


@dataclass
class BootLoaderEntryFile:
    """A BLS Type 1 ``.conf`` file as lines (split on ``\\n``, no terminator)."""
    lines: list[str]

    @classmethod
    def parse(cls, content: str) -> BootLoaderEntryFile:
        lines = content.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # Rust split_terminator
        return cls(lines)

    def get_values(self, key: str) -> list[str]:
        """Values of every ``key<ws>value`` line (value with leading blanks removed)."""
        out = []
        for line in self.lines:
            if line.startswith(key) and len(line) > len(key) and \
                    _is_ascii_whitespace(line[len(key)]):
                out.append(line[len(key):].lstrip(_RUST_WHITESPACE))
        return out

    def get_value(self, key: str) -> str | None:
        values = self.get_values(key)
        return values[0] if values else None


# Unicode White_Space (Rust char::is_whitespace); Python's str.strip()/split()
# would also treat U+001C..U+001F as blanks.
_RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


@dataclass
class Type1Entry:
    filename: bytes
    entry: BootLoaderEntryFile
    files: dict[str, Leaf] = field(default_factory=dict)  # path in the entry -> leaf


def _load_type1(root: Directory, read_file: ReadFile) -> list[Type1Entry]:
    entries_dir = get_directory_opt(root, b"/boot/loader/entries")
    if entries_dir is None:
        return []
    out = []
    for name, node in entries_dir.sorted_entries():
        if not name.endswith(b".conf"):
            continue
        where = f"/boot/loader/entries/{name.decode('utf-8', 'backslashreplace')}"
        if isinstance(node, Directory):
            raise BootEntryError(f"{where} is a directory")
        if not isinstance(node.content, (Inline, External, Sparse)):
            raise BootEntryError(f"{where} is not a regular file")
        data = b"" if isinstance(node.content, Sparse) else read_file(node)
        try:
            entry = BootLoaderEntryFile.parse(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise BootEntryError(f"{where} is not valid UTF-8") from None
        files = {}
        for key in ("linux", "initrd", "efi"):
            for value in entry.get_values(key):
                try:
                    files[value] = resolve_file(root, value.encode())
                except BootEntryError as e:
                    raise BootEntryError(f"{where}: {key} {value!r}: {e}") from None
        out.append(Type1Entry(name, entry, files))
    return out


# ---- Type 2 entries (UKIs) ----------------------------------------------------------

@dataclass
class Type2Entry:
    kver: bytes | None       # the /usr/lib/modules/<kver> it came from, if any
    file_path: bytes         # relative to the directory searched
    leaf: Leaf
    is_addon: bool           # not directly in the searched directory


def _find_ukis(d: Directory, prefix: bytes, kver: bytes | None, out: list[Type2Entry]) -> None:
    for name, node in d.sorted_entries():
        path = prefix + b"/" + name if prefix else name
        if isinstance(node, Directory):
            _find_ukis(node, path, kver, out)
            continue
        if not name.endswith(b".efi"):
            continue
        if not isinstance(node.content, (Inline, External, Sparse)):
            raise BootEntryError(f"{_show(name)} is not a regular file")
        out.append(Type2Entry(kver, path, node, is_addon=bool(prefix)))


def _load_type2(root: Directory) -> list[Type2Entry]:
    out: list[Type2Entry] = []
    efi_linux = get_directory_opt(root, b"/boot/EFI/Linux")
    if efi_linux is not None:
        _find_ukis(efi_linux, b"", None, out)
    modules = get_directory_opt(root, b"/usr/lib/modules")
    if modules is not None:
        for kver, node in modules.sorted_entries():
            if isinstance(node, Directory):
                _find_ukis(node, b"", kver, out)
    return out


# ---- /usr/lib/modules kernels -------------------------------------------------------

@dataclass
class UsrLibModulesVmlinuz:
    kver: str
    vmlinuz: Leaf
    initramfs: Leaf | None


def _load_vmlinuz(root: Directory) -> list[UsrLibModulesVmlinuz]:
    out: list[UsrLibModulesVmlinuz] = []
    modules = get_directory_opt(root, b"/usr/lib/modules")
    if modules is None:
        return out
    for kver, node in modules.sorted_entries():
        if not isinstance(node, Directory):
            continue
        try:
            vmlinuz = get_file(node, b"vmlinuz")
        except BootEntryError:
            continue  # upstream ignores a missing or non-regular vmlinuz
        try:
            initramfs: Leaf | None = get_file(node, b"initramfs.img")
        except BootEntryError:
            initramfs = None
        try:
            name = kver.decode("utf-8")
        except UnicodeDecodeError:
            raise BootEntryError(
                f"kernel version directory {_show(kver)} in /usr/lib/modules is not UTF-8"
            ) from None
        out.append(UsrLibModulesVmlinuz(name, vmlinuz, initramfs))
    return out


BootEntry = Type1Entry | Type2Entry | UsrLibModulesVmlinuz


def get_boot_resources(root: Directory, read_file: ReadFile) -> list[BootEntry]:
    """All boot entries of the image, validating them (read-only).

    ``read_file`` returns the content of a regular-file leaf (only Type 1
    ``.conf`` files are read)."""
    entries: list[BootEntry] = []
    entries.extend(_load_type1(root, read_file))
    entries.extend(_load_type2(root))
    entries.extend(_load_vmlinuz(root))
    return entries
