#!/usr/bin/env python3
"""Writes the four test archives of tar-rs 0.4.46's tests that no published package
ships (README.md beside this file): pax2.tar, biguid_gnu.tar, biguid_pax.tar and
pax_size.tar, each with what its tests read from it.

Run from anywhere: `python3 vendor/tar/tests/archives/make_missing.py`. Python's
tarfile only, fixed times and owners, so the bytes are the same on every run of one
Python version.
"""
import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 1625585664


def info(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644, uid=1000, gid=1000):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = MTIME
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = "user"
    ti.linkname = link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    return ti, data


def write(name, fmt, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if ti.size else None)
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(buf.getvalue())


def pax2():
    # `pax_path`: the first member's pax `path` ends in `aaaaaaaaaaaaaaa`.
    # `pax_linkpath`: members 4 and 5 are a symlink and a hard link whose pax
    # `linkpath` is longer than 99 bytes and ends in `bbb…` and `ccc…`.
    a = "/".join(["a" * 15] * 12)
    b, c = "b" * 15, "c" * 15
    write("pax2.tar", tarfile.PAX_FORMAT, [
        info(a, tarfile.DIRTYPE, mode=0o755),
        info(f"{a}/{c}", data=c.encode() + b"\n"),
        info(f"{a}/{b}", data=b.encode() + b"\n"),
        info(b, tarfile.SYMTYPE, link=f"{a}/{b}", mode=0o777),
        info(c, tarfile.LNKTYPE, link=f"{a}/{c}"),
    ])


def biguid():
    # `pax_and_gnu_uid_gid`: ./test.txt owned by uid and gid 4294967294 (u32::MAX - 1),
    # once as GNU base-256 numbers in the header and once as pax `uid` / `gid` records.
    big = 4294967294
    for name, fmt in (("biguid_gnu.tar", tarfile.GNU_FORMAT),
                      ("biguid_pax.tar", tarfile.PAX_FORMAT)):
        write(name, fmt, [info("./test.txt", data=b"Hello, world!\n", uid=big, gid=big)])


def pax_size():
    # `pax_size`: the member's header says size 0, its pax header's fourth (last)
    # record says `size=4`. No data follows the header (the four bytes read are the
    # end-of-archive zeros), as in tar-rs's own archive.
    ti, _ = info("test", mode=0o664)
    ti.pax_headers = {
        "mtime": "1591049509.784738529",
        "atime": "1591049509.784738529",
        "ctime": "1591049509.784738529",
        "size": "4",
    }
    write("pax_size.tar", tarfile.PAX_FORMAT, [(ti, b"")])


if __name__ == "__main__":
    pax2()
    biguid()
    pax_size()
