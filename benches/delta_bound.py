#!/usr/bin/env python3
"""The bytes a delta update from packed OLD to packed NEW must fetch at least (SPEC §18):
the compressed members holding NEW's files whose content is new (changed, or added: no
file of that path and sha256 in OLD), plus NEW's table member and footer. Reads the
table as docs/packed-archive.md defines it (gzip archives only), independently of
stretcher's own reader.

    python3 benches/delta_bound.py OLD.tar.gz NEW.tar.gz   ->  "BOUND MEMBERS FILES TABLE"
"""
import struct
import sys
import zlib

FOOTER_GZIP = 54


def footer(path):
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(size - FOOTER_GZIP)
        tail = f.read(FOOTER_GZIP)
        # 1f 8b 08 04, mtime, xfl, os, XLEN, 'S' 'T' LEN, payload
        assert tail[:4] == b"\x1f\x8b\x08\x04", "not a gzip footer"
        payload = tail[16:16 + 28]
        magic, version, codec, _, off, length = struct.unpack("<8sHBBQQ", payload)
        assert magic == b"STRETCHR" and version == 1 and codec == 1, (magic, version, codec)
        assert off + length + FOOTER_GZIP == size
        f.seek(off)
        member = f.read(length)
    return member, length


class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def varint(self):
        v = s = 0
        while True:
            c = self.b[self.i]
            self.i += 1
            v |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return v

    def zigzag(self):
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def bytes(self, n=None):
        n = self.varint() if n is None else n
        out = self.b[self.i:self.i + n]
        self.i += n
        return out


def table(path):
    member, length = footer(path)
    raw = zlib.decompressobj(31).decompress(member)
    r = Reader(raw)
    assert r.varint() == 1, "table version"
    files = {}
    for _ in range(r.varint()):
        p = r.bytes()
        kind = r.varint()
        m = sha = None
        if kind == 0:
            m = (r.varint(), r.varint())
            r.varint(); r.varint()  # raw_len, data_offset
            sha = r.bytes(32)
        elif kind in (2, 3):
            r.bytes()
        r.varint(); r.varint(); r.varint()  # mode, uid, gid
        r.bytes(); r.bytes()  # uname, gname
        r.zigzag(); r.varint()  # mtime
        r.varint()  # size
        if kind == 0:
            files[p] = (sha, m)
    assert r.i == len(raw), "bytes after the entries"
    return files, length


old, _ = table(sys.argv[1])
new, table_len = table(sys.argv[2])
members = {m for p, (sha, m) in new.items() if old.get(p, (None,))[0] != sha}
nfiles = sum(1 for p, (sha, _) in new.items() if old.get(p, (None,))[0] != sha)
got = sum(length for _, length in members)
print(got + table_len + FOOTER_GZIP, got, nfiles, table_len + FOOTER_GZIP)
