"""Read files out of a compiled Qt resource bundle (``.rcc``), without Qt.

Some Debian packages ship their images inside ``.rcc`` files (GCompris keeps every
activity's pictures in ``/usr/share/gcompris-qt/rcc/<activity>.rcc``). The format
(Qt's ``rcc`` binary output, versions 1 to 3) is a header, a tree of nodes, a data block
and a names block, all big-endian:

- header: ``b"qres"``, version, tree offset, data offset, names offset (+ flags in v3);
- node (14 bytes, 22 from v2 on): name offset, flags (1 = zlib-compressed, 2 = directory,
  4 = zstd-compressed), then a directory's child count and first child index, or a file's
  locale and data offset; v2+ append a 64-bit modification time;
- name: 16-bit length, 32-bit hash, UTF-16BE characters;
- data: 32-bit length, then the bytes; zlib-compressed ones (``qCompress``) start with the
  32-bit uncompressed length.

zstd-compressed files (Qt 6's default) raise :class:`QtResourceError` unless the
``zstandard`` module is installed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

__all__ = ["QtResourceError", "read_qt_resource", "qt_resource_member"]

_ZLIB, _DIR, _ZSTD = 1, 2, 4


class QtResourceError(ValueError):
    """Not a Qt resource bundle, a damaged one, or a member it does not hold."""


def read_qt_resource(src: str | Path | bytes) -> dict[str, bytes]:
    """All files of a ``.rcc`` bundle: ``{"/prefix/dir/name.ext": bytes}``, decompressed."""
    blob = src if isinstance(src, bytes) else Path(src).read_bytes()
    name = "<bytes>" if isinstance(src, bytes) else str(src)
    if len(blob) < 20 or blob[:4] != b"qres":
        raise QtResourceError(f"{name}: not a Qt resource bundle (no 'qres' header)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    if version not in (1, 2, 3):
        raise QtResourceError(f"{name}: unsupported Qt resource version {version}")
    node_size = 14 if version == 1 else 22
    files: dict[str, bytes] = {}
    try:
        stack = [(0, "")]
        while stack:
            index, parent = stack.pop()
            offset = tree + index * node_size
            name_off, flags = struct.unpack(">IH", blob[offset:offset + 6])
            path = f"{parent}/{_node_name(blob, names, name_off)}" if index else ""
            if flags & _DIR:
                count, first = struct.unpack(">II", blob[offset + 6:offset + 14])
                stack.extend((child, path) for child in range(first, first + count))
            else:
                (data_off,) = struct.unpack(">I", blob[offset + 10:offset + 14])
                files[path] = _payload(blob, data + data_off, flags, name, path)
    except (struct.error, zlib.error, UnicodeDecodeError) as err:
        raise QtResourceError(f"{name}: damaged Qt resource bundle ({err})") from None
    return files


def qt_resource_member(src: str | Path, member: str) -> bytes:
    """One file of a ``.rcc`` bundle by its resource path (``/gcompris/src/.../x.webp``)."""
    files = read_qt_resource(src)
    if member not in files:
        raise QtResourceError(f"{src}: no member {member!r} ({len(files)} files in the bundle)")
    return files[member]


def _node_name(blob: bytes, names: int, offset: int) -> str:
    (length,) = struct.unpack(">H", blob[names + offset:names + offset + 2])
    start = names + offset + 6  # skip the 32-bit hash
    return blob[start:start + 2 * length].decode("utf-16-be")


def _payload(blob: bytes, offset: int, flags: int, name: str, path: str) -> bytes:
    (size,) = struct.unpack(">I", blob[offset:offset + 4])
    raw = blob[offset + 4:offset + 4 + size]
    if len(raw) != size:
        raise struct.error(f"{path}: data runs past the end of the file")
    if flags & _ZLIB:
        return zlib.decompress(raw[4:])
    if flags & _ZSTD:
        try:
            import zstandard
        except ImportError:
            raise QtResourceError(f"{name}: {path} is zstd-compressed; pip install zstandard") from None
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw
