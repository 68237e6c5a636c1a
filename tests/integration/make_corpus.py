#!/usr/bin/env python3
"""Builds the archive corpus of tests/integration/archives_corpus.rs (issue 12).

Usage: make_corpus.py OUT_DIR

Writes OUT_DIR/<name> archives made by real tools (GNU tar in every --format, -S
sparse in every sparse version, -r / -u appends, --xattrs, -g incremental dumps;
bsdtar; gzip, pzstd, zstd, xz, bzip2, concatenated members, zero padding; Python's
tarfile and hand-patched headers for blank and odd fields, and for the layouts of Go's
archive/tar and libarchive's test archives) and OUT_DIR/index.tsv,
one line per archive:

    name <TAB> expectation <TAB> what it covers

expectation is `ok` (GNU tar 1.34 extracts it; stretcher must deploy the same tree),
`ok-gnu-warns` (GNU tar extracts the same tree but exits non-zero), or
`refuse:<words>` (SPEC §7 refuses it; the error must contain <words>).
Needs: tar, bsdtar, gzip, zstd, pzstd, xz, bzip2, git (run as root for owners).
"""

import io
import os
import shutil
import subprocess
import sys
import tarfile

OUT = WORK = ""  # set by main()
T0 = 1_600_000_000
ROOT = os.geteuid() == 0
INDEX = []


def run(*cmd, cwd=None, stdin=None):
    subprocess.run(cmd, cwd=cwd, check=True, stdin=stdin)


def add(name, expect, what):
    assert os.path.exists(os.path.join(OUT, name)), name
    INDEX.append((name, expect, what))


def write(path, data, mode=0o644, mtime=T0, owner=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if owner and ROOT:
        os.chown(path, *owner)
    os.utime(path, (mtime, mtime))


def settime(path, mtime):
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def tree(name, long=True, odd=True):
    """A source tree; `long`: names / targets over 100 bytes; `odd`: non-ASCII names."""
    root = os.path.join(WORK, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    write(f"{root}/top.txt", b"top\n", 0o644, T0 + 1)
    write(f"{root}/bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755, T0 + 2)
    write(f"{root}/bin/secret", b"s3cr3t\n", 0o600, T0 + 3, owner=(1234, 5678))
    write(f"{root}/etc/app.conf", b"x = 1\n" * 300, 0o640, T0 + 4)
    write(f"{root}/empty", b"", 0o444, T0 + 5)
    write(f"{root}/big.bin", bytes(range(256)) * 4096, 0o644, T0 + 6)
    os.link(f"{root}/top.txt", f"{root}/hard-top.txt")
    os.symlink("top.txt", f"{root}/link-top")
    os.symlink("etc/app.conf", f"{root}/etc-link")
    os.symlink("dangling/target", f"{root}/dangling")
    os.makedirs(f"{root}/private")
    os.makedirs(f"{root}/emptydir")
    if long:
        deep = f"{root}/" + "/".join(["a-rather-long-directory-name"] * 5)
        write(f"{deep}/and-a-file-with-a-long-name-too.txt", b"deep\n", 0o644, T0 + 7)
        os.symlink("x" * 150, f"{root}/long-target-link")
    if odd:
        write(f"{root}/caf\u00e9 \u2603.txt", b"utf8\n", 0o644, T0 + 8)
        write(os.fsencode(root) + b"/latin1-caf\xe9", b"latin1\n", 0o644, T0 + 9)
    for l in ["link-top", "etc-link", "dangling"] + (["long-target-link"] if long else []):
        settime(f"{root}/{l}", T0 + 10)
    os.chmod(f"{root}/private", 0o700)
    if ROOT:
        os.chown(f"{root}/private", 1234, 5678)
        os.lchown(f"{root}/link-top", 1234, 5678)
    for d, t in [("bin", T0 + 20), ("etc", T0 + 21), ("private", T0 + 22), ("emptydir", T0 + 23), ("", T0 + 30)]:
        settime(os.path.join(root, d), t)
    if long:
        p = root
        for c in ["a-rather-long-directory-name"] * 5:
            p = os.path.join(p, c)
        while p != root:
            settime(p, T0 + 24)
            p = os.path.dirname(p)
    return root


def gnutar(name, src, *flags, files=("."), expect="ok", what=""):
    run("tar", "-cf", os.path.join(OUT, name), *flags, "-C", src, *files)
    add(name, expect, what)


def sparse_tree(name):
    root = os.path.join(WORK, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    # Six data runs (more than the 4 map slots of an old-GNU header: extension blocks).
    with open(f"{root}/disk.img", "wb") as f:
        f.truncate(64 << 20)
        for i in range(6):
            f.seek(i * (10 << 20) + 4096 * i)
            f.write(bytes([0x41 + i]) * (5000 + i))
    with open(f"{root}/hole-at-end", "wb") as f:
        f.write(b"head")
        f.truncate(8 << 20)
    with open(f"{root}/hole-at-start", "wb") as f:
        f.seek(3 << 20)
        f.write(b"tail")
    write(f"{root}/dense.txt", b"dense\n")
    for f_ in ["disk.img", "hole-at-end", "hole-at-start"]:
        os.utime(f"{root}/{f_}", (T0, T0))
    settime(root, T0)
    return root


def compress(src_name, name, *cmd, what, expect="ok"):
    with open(os.path.join(OUT, src_name), "rb") as i, open(os.path.join(OUT, name), "wb") as o:
        subprocess.run(cmd, stdin=i, stdout=o, check=True)
    add(name, expect, what)


def halves(src_name, name, cmd, what):
    """The tar cut in two, each half compressed on its own, concatenated."""
    data = open(os.path.join(OUT, src_name), "rb").read()
    cut = len(data) // 2 + 123
    out = b""
    for part in (data[:cut], data[cut:]):
        out += subprocess.run(cmd, input=part, stdout=subprocess.PIPE, check=True).stdout
    open(os.path.join(OUT, name), "wb").write(out)
    add(name, "ok", what)


# ---- raw headers (Python builds them; tar-rs and GNU tar read them) ----

def header(name, typ=b"0", size=0, mode=0o644, mtime=T0, uid=0, gid=0, link=b"",
           magic=b"ustar\x0000", fields=None):
    b = bytearray(512)
    b[0:len(name)] = name
    b[100:108] = b"%07o\0" % mode
    b[108:116] = b"%07o\0" % uid
    b[116:124] = b"%07o\0" % gid
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"%011o\0" % mtime
    b[156:157] = typ
    b[157:157 + len(link)] = link
    b[257:265] = magic
    for (start, end), value in (fields or {}).items():
        b[start:end] = value.ljust(end - start, b"\0")
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def member(name, data=b"", typ=b"0", **kw):
    return header(name, typ, len(data), **kw) + pad(data)


def record(key, value):
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax(records, name=b"PaxHeaders/x"):
    data = b"".join(record(k, v) for k, v in records)
    return member(name, data, b"x")


def long_name(name, typ=b"L"):
    return member(b"././@LongLink", name + b"\0", typ, magic=b"ustar  \0")


END = b"\0" * 1024


def raw(name, data, expect="ok", what=""):
    open(os.path.join(OUT, name), "wb").write(data)
    add(name, expect, what)


def main():
    global OUT, WORK
    OUT = os.path.abspath(sys.argv[1])
    WORK = os.path.join(OUT, "_src")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(WORK)

    full = tree("full")
    simple = tree("simple", long=False, odd=False)
    for fmt in ["gnu", "oldgnu", "posix"]:
        gnutar(f"gnutar-{fmt}.tar", full, f"--format={fmt}",
               what=f"GNU tar --format={fmt}: long names and targets, UTF-8 and non-UTF-8 names, hard links, owners")
    for fmt in ["ustar", "v7"]:
        gnutar(f"gnutar-{fmt}.tar", simple, f"--format={fmt}", what=f"GNU tar --format={fmt}")
    gnutar("gnutar-posix-names.tar", full, "--format=posix", "--numeric-owner",
           what="pax, numeric owners")

    # Negative (pre-1970) mtimes: base-256 in gnu / oldgnu, pax mtime in posix.
    neg = os.path.join(WORK, "neg")
    write(f"{neg}/1969.txt", b"a\n", mtime=-86400 * 30)
    write(f"{neg}/1901.txt", b"b\n", mtime=-2_100_000_000)
    write(f"{neg}/2100.txt", b"c\n", mtime=4_102_444_800)
    settime(neg, T0)
    for fmt in ["gnu", "oldgnu", "posix"]:
        gnutar(f"negative-mtime-{fmt}.tar", neg, f"--format={fmt}",
               what=f"mtimes before 1970 and after 2038 ({fmt}: base-256 / pax)")

    # Sparse: old GNU 'S' (gnu, oldgnu) and pax 0.0, 0.1, 1.0.
    sp = sparse_tree("sparse")
    for fmt in ["gnu", "oldgnu"]:
        gnutar(f"sparse-{fmt}.tar", sp, f"--format={fmt}", "-S", what=f"-S sparse, {fmt} ('S' with extension blocks)")
    for ver in ["0.0", "0.1", "1.0"]:
        gnutar(f"sparse-pax-{ver}.tar", sp, "--format=posix", "-S", f"--sparse-version={ver}",
               what=f"-S sparse, pax sparse format {ver}")
    run("bsdtar", "-cf", os.path.join(OUT, "sparse-bsdtar.tar"), "-C", sp, ".")
    add("sparse-bsdtar.tar", "ok", "bsdtar of sparse files (pax GNU.sparse 1.0)")
    compress("sparse-pax-1.0.tar", "sparse-pax-1.0.tar.zst", "zstd", "-q", "-c", what="pax 1.0 sparse in zstd")

    # bsdtar formats.
    for fmt, tag in [("pax", "pax"), ("ustar", "ustar"), ("gnutar", "gnutar"), ("v7tar", "v7")]:
        src = full if fmt in ("pax", "gnutar") else simple
        run("bsdtar", "--format", fmt, "-cf", os.path.join(OUT, f"bsdtar-{tag}.tar"), "-C", src, ".")
        add(f"bsdtar-{tag}.tar", "ok", f"bsdtar --format {fmt}")
    run("bsdtar", "-czf", os.path.join(OUT, "bsdtar-default.tar.gz"), "-C", full, ".")
    add("bsdtar-default.tar.gz", "ok", "bsdtar -czf (restricted pax, gzip)")

    # Compression: every format, several members / frames / streams, padding.
    base = "gnutar-gnu.tar"
    compress(base, "gnu.tar.gz", "gzip", "-c", what="gzip")
    compress(base, "gnu.tar.bz2", "bzip2", "-c", what="bzip2")
    compress(base, "gnu.tar.xz", "xz", "-c", what="xz")
    compress(base, "gnu.tar.zst", "zstd", "-q", "-c", what="zstd")
    compress(base, "gnu.tar.pzstd", "pzstd", "-q", "-c", "-p", "2", what="pzstd (skippable frames first)")
    halves(base, "gnu-2members.tar.gz", ["gzip", "-c"], "gzip, two members")
    halves(base, "gnu-2frames.tar.zst", ["zstd", "-q", "-c"], "zstd, two frames")
    halves(base, "gnu-2streams.tar.xz", ["xz", "-c"], "xz, two streams")
    halves(base, "gnu-2streams.tar.bz2", ["bzip2", "-c"], "bzip2, two streams")
    data = open(os.path.join(OUT, "gnu.tar.gz"), "rb").read()
    raw("gnu-zero-padded.tar.gz", data + b"\0" * 10240, what="gzip followed by zero padding (tape blocking)")

    # Appends: duplicates, the last one wins.
    app = os.path.join(WORK, "append")
    write(f"{app}/conf", b"version 1\n", 0o644, T0)
    write(f"{app}/other", b"other\n", 0o644, T0)
    name = os.path.join(OUT, "append-r.tar")
    run("tar", "-cf", name, "-C", app, "conf", "other")
    write(f"{app}/conf", b"version 2, longer\n", 0o600, T0 + 100)
    run("tar", "-rf", name, "-C", app, "conf")
    add("append-r.tar", "ok", "tar -r: a member twice, the later wins")
    name = os.path.join(OUT, "append-u.tar")
    write(f"{app}/conf", b"version 1\n", 0o644, T0)
    run("tar", "-cf", name, "-C", app, "conf", "other")
    write(f"{app}/conf", b"v3\n", 0o644, T0 + 200)
    run("tar", "-uf", name, "-C", app, "conf", "other")
    add("append-u.tar", "ok", "tar -u: only the changed member appended")
    # file, then a symlink of the same name; hard link made before an overwrite
    name = os.path.join(OUT, "append-file-then-symlink.tar")
    write(f"{app}/conf", b"version 1\n", 0o644, T0)
    run("tar", "-cf", name, "-C", app, "conf")
    os.unlink(f"{app}/conf")
    os.symlink("other", f"{app}/conf")
    run("tar", "-rf", name, "-C", app, "conf")
    add("append-file-then-symlink.tar", "ok", "file, then a symlink of the same name")
    name = os.path.join(OUT, "append-dir-then-file.tar")
    d2 = os.path.join(WORK, "append2")
    os.makedirs(f"{d2}/x")
    settime(f"{d2}/x", T0)
    run("tar", "-cf", name, "-C", d2, "x")
    shutil.rmtree(f"{d2}/x")
    write(f"{d2}/x", b"now a file\n")
    run("tar", "-rf", name, "-C", d2, "x")
    add("append-dir-then-file.tar", "ok", "empty directory, then a file of the same name")
    name = os.path.join(OUT, "append-hardlink-overwrite.tar")
    d3 = os.path.join(WORK, "append3")
    write(f"{d3}/f", b"old content\n", 0o644, T0)
    os.link(f"{d3}/f", f"{d3}/h")
    run("tar", "-cf", name, "-C", d3, "f", "h")
    os.unlink(f"{d3}/h")
    os.unlink(f"{d3}/f")
    write(f"{d3}/f", b"new content\n", 0o644, T0 + 5)
    run("tar", "-rf", name, "-C", d3, "f")
    add("append-hardlink-overwrite.tar", "ok", "a hard link, then its target overwritten")
    raw("dup-file-then-dir.tar",
        member(b"x", b"file first\n") + header(b"x/", b"5", mode=0o755) + member(b"x/in", b"in\n") + END,
        what="a file, then a directory of the same name")
    # (A non-empty directory followed by a file of the same name: GNU tar fails and
    # keeps the directory; SPEC §7 says the later member wins, which
    # tests/integration/unpack.rs later_duplicate_replaces_without_writing_through
    # checks.)

    # --xattrs: pax records with binary values (newline bytes) are read, not applied.
    xa = os.path.join(WORK, "xattrs")
    write(f"{xa}/signed.bin", b"payload\n")
    try:
        os.setxattr(f"{xa}/signed.bin", "user.ima", b"\x03\x02\n\x00binary\nvalue\n")
        settime(xa, T0)
        gnutar("xattrs-posix.tar", xa, "--format=posix", "--xattrs", what="--xattrs: a value with newline bytes")
    except OSError:
        pass
    raw("pax-newline-values.tar",
        pax([(b"comment", b"line 1\nline 2\n"), (b"path", b"name\nwith newline")]) + member(b"ignored", b"nl\n")
        + pax([(b"SCHILY.xattr.security.ima", b"\x00\n\n\xff")]) + member(b"ima", b"x\n") + END,
        what="pax values holding newlines (comment, path, binary xattr)")

    # Odd header fields.
    blank = b" " * 7 + b"\0"
    raw("blank-numeric.tar",
        header(b"dir/", b"5", fields={(108, 116): blank, (116, 124): blank, (124, 136): b" " * 11 + b"\0"})
        + member(b"dir/file", b"blank owner\n", fields={(108, 116): b"", (116, 124): b""})
        + header(b"dir/empty", b"0", fields={(124, 136): b" " * 11 + b"\0", (108, 116): blank})
        + END, what="blank uid / gid / size fields (plexus-archiver)")
    raw("two-long-names.tar",
        long_name(b"first/" + b"n" * 120) + long_name(b"second-" + b"m" * 120) + member(b"short", b"x\n", magic=b"ustar  \0")
        + long_name(b"t" * 110, b"K") + long_name(b"target-" + b"u" * 110, b"K")
        + header(b"sym", b"2", magic=b"ustar  \0") + END,
        what="two GNU long names / long links for one member: the last wins")
    raw("two-pax-headers.tar",
        pax([(b"path", b"first-name"), (b"mtime", b"1500000000")]) + pax([(b"path", b"second-name")])
        + member(b"header-name", b"x\n")
        + pax([(b"path", b"a"), (b"path", b"b-last")]) + member(b"c", b"y\n") + END,
        what="two pax headers for one member; a key twice in one header")
    raw("hardlink-with-size-pax.tar",
        member(b"f", b"abc") + pax([(b"comment", b"c")]) + header(b"h", b"1", 3, link=b"f") + pad(b"xyz")
        + member(b"after", b"after\n") + END,
        expect="ok-gnu-warns",
        what="a pax hard link that carries data: skipped (GNU tar resyncs with an error)")
    raw("hardlink-with-size-ustar.tar",
        member(b"f", b"abc") + header(b"h", b"1", 3, link=b"f") + pad(b"xyz") + member(b"after", b"after\n") + END,
        expect="ok-gnu-warns",
        what="a ustar hard link that carries data: skipped (GNU tar resyncs with an error)")
    raw("hardlink-absolute-target.tar",
        member(b"/abs/f", b"abc\n") + header(b"/abs/h", b"1", link=b"/abs/f") + END,
        what="a hard link whose target has a leading '/' (stripped, as names)")
    raw("no-end-marker.tar", member(b"a", b"a\n") + member(b"b", b"b\n"),
        what="ends at a member boundary without the two zero blocks")
    raw("one-zero-block.tar", member(b"a", b"a\n") + b"\0" * 512, what="ends after one zero block")
    raw("v7-dir-size-1.tar",
        header(b"v7dir/", b"0", 1, magic=b"\0" * 8) + header(b"v7dir/f", b"0", 3, magic=b"\0" * 8)
        + pad(b"abc") + END, what="a v7 directory (trailing slash) with a size of 1: no data follows")
    raw("dir-size-no-data.tar",
        header(b"d/", b"5", 512) + member(b"d/f", b"abc") + END,
        what="a directory header with a size and no data (GNU tar skips nothing)")
    raw("pax-global-header.tar",
        member(b"pax_global_header", record(b"comment", b"0123456789abcdef"), b"g") + member(b"f", b"g\n") + END,
        what="a pax global header (git archive) is ignored")
    raw("negative-base256.tar",
        header(b"old", b"0", 2, fields={(136, 148): b"\xff" * 8 + (-1_000_000_000 & 0xffffffff).to_bytes(4, "big")},
               magic=b"ustar  \0") + pad(b"o\n") + END,
        what="hand-made GNU base-256 negative mtime")

    # Python tarfile: pax with non-UTF-8 names, GNU with negative times.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        ti = tarfile.TarInfo("caf\udce9-binary-name")
        ti.size, ti.mtime, ti.mode = 2, T0, 0o644
        tf.addfile(ti, io.BytesIO(b"b\n"))
        ti = tarfile.TarInfo("frac-mtime")
        ti.size, ti.mtime, ti.mode = 2, T0 + 0.25, 0o644
        tf.addfile(ti, io.BytesIO(b"f\n"))
    raw("python-pax-binary-name.tar", buf.getvalue(), what="Python tarfile pax, hdrcharset=BINARY name, fractional mtime")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("ancient")
        ti.size, ti.mtime, ti.mode = 2, -3_000_000_000, 0o644
        tf.addfile(ti, io.BytesIO(b"a\n"))
        ti = tarfile.TarInfo("big-uid")
        ti.size, ti.mtime, ti.uid, ti.gid = 2, T0, 3_000_000, 3_000_001
        tf.addfile(ti, io.BytesIO(b"u\n"))
    raw("python-gnu-base256.tar", buf.getvalue(), what="Python tarfile GNU: base-256 negative mtime, large ids")

    # GNU incremental dump: 'D' directories keep their owner and mode.
    inc = os.path.join(WORK, "incr")
    write(f"{inc}/dumped/file", b"in a dump dir\n")
    os.chmod(f"{inc}/dumped", 0o750)
    if ROOT:
        os.chown(f"{inc}/dumped", 1234, 5678)
    settime(f"{inc}/dumped", T0)
    settime(inc, T0)
    snar = os.path.join(WORK, "snar")
    gnutar("gnu-incremental.tar", inc, "--format=gnu", f"--listed-incremental={snar}",
           what="GNU -g incremental dump: 'D' directories with owner and mode")

    # git archive (pax global header with the commit id).
    repo = os.path.join(WORK, "repo")
    os.makedirs(repo)
    env = dict(os.environ, GIT_AUTHOR_DATE="@1600000000 +0000", GIT_COMMITTER_DATE="@1600000000 +0000")
    for args in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    write(f"{repo}/tracked", b"tracked\n")
    subprocess.run(["git", "add", "tracked"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "y"], cwd=repo,
                   check=True, env=env)
    with open(os.path.join(OUT, "git-archive.tar"), "wb") as o:
        subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=repo, stdout=o, check=True)
    add("git-archive.tar", "ok", "git archive (pax global header)")

    # Layouts of other projects' test archives that stretcher once read otherwise than
    # GNU tar (Go's archive/tar testdata, libarchive's test files), built here.
    gnu = b"ustar  \0"
    dev = lambda major, minor: {(329, 337): b"%07o\0" % major, (337, 345): b"%07o\0" % minor}
    def no_data_members(size, tag):
        out = header(b"nd/", b"5", size, mode=0o750, magic=gnu)
        out += header(b"nd/file" + tag, b"0", 10, magic=gnu) + pad(b"file data\n")
        out += header(b"nd/hard" + tag, b"1", size, link=b"nd/file", magic=gnu)
        out += header(b"nd/sym" + tag, b"2", size, mode=0o777, link=b"file", magic=gnu)
        if ROOT:
            out += header(b"nd/fifo" + tag, b"6", size, mode=0o640, magic=gnu)
            out += header(b"nd/null" + tag, b"3", size, mode=0o666, magic=gnu, fields=dev(1, 3))
            out += header(b"nd/sda" + tag, b"4", size, mode=0o660, magic=gnu, fields=dev(8, 0))
        return out
    raw("no-data-with-size.tar", no_data_members(0, b"") + no_data_members(5, b"-sized") + END,
        what="link, symlink, device and fifo headers with a size and no data (Go's hdr-only.tar)")
    readme = b"a v7 member's data\n" * 17
    # (Directory members: a directory the archive does not list gets the time of its
    # creation, which a redeploy in another second changes.)
    v7dir = lambda name: header(name, b"\0", 0, mode=0o755, magic=b"\0" * 8)
    raw("hardlink-size-no-data-v7.tar",
        v7dir(b"v7/") + v7dir(b"v7/docs/")
        + header(b"v7/docs/READMf", b"\0", len(readme), mode=0o444, magic=b"\0" * 8) + pad(readme)
        + header(b"v7/README", b"1", len(readme), mode=0o444, link=b"v7/docs/READMf", magic=b"\0" * 8),
        what="a v7 hard link giving its target's size, no data, no end marker (libarchive)")
    nul_ended = record(b"path", b"pax/long-name")[:-1] + b"\0"
    raw("pax-record-nul-not-newline.tar",
        member(b"PaxHeaders/f", nul_ended, b"x") + member(b"f", b"f\n") + END,
        expect="refuse:malformed extended header: missing newline",
        what="a pax record ending in NUL (Go's pax-bad-hdr-file.tar)")
    raw("pax-empty-value-no-newline.tar",
        member(b"PaxHeaders/empty", b"4 x=", b"x") + member(b"empty", b"") + END,
        expect="refuse:malformed extended header: missing newline",
        what="a pax record with an empty value and no newline (libarchive)")
    raw("pax-mtime-trailing-bytes.tar",
        pax([(b"mtime", b"999xxx9324.432432444444")]) + member(b"foo", b"mtime 999\n" * 60) + b"\0" * 4,
        what="a pax mtime with bytes after the number, 4 zero bytes after the last member (Go)")
    raw("small.tar", member(b"f1", b"f1\n") + header(b"d1/", b"5", mode=0o755) + member(b"d1/f1", b"f1\n") + END,
        what="a small tar")
    compress("small.tar", "small.tar.pzstd", "pzstd", "-q", "-c",
             what="pzstd, under 512 bytes (libarchive's test_compat_zstd_2.tar.zst)")
    assert os.path.getsize(os.path.join(OUT, "small.tar.pzstd")) < 512
    chunk1, chunk2 = bytes(range(256)) * 16, b"end"
    sparse_map = pad(b"2\n0\n%d\n%d\n%d\n" % (len(chunk1), 1 << 20, len(chunk2)))
    stored = sparse_map + chunk1 + chunk2 + b"!"
    raw("sparse-pax-1.0-unused-data.tar",
        pax([(b"size", b"%d" % len(stored)), (b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
             (b"GNU.sparse.name", b"sparse-file"), (b"GNU.sparse.realsize", b"%d" % ((1 << 20) + 4))])
        + header(b"GNUSparseFile.0/sparse-file", b"0", len(stored)) + pad(stored)
        + member(b"after", b"after\n") + END,
        what="pax 1.0 sparse: data the map does not use, a real size past the last chunk (libarchive)")

    # What SPEC §7 refuses (GNU tar fails on these too).
    raw("not-an-archive.bin", b"This is not an archive at all.\n" * 40, expect="refuse:not an archive",
        what="a text file")
    raw("dotdot-member.tar", member(b"ok", b"ok\n") + member(b"../escape", b"x\n") + END,
        expect="refuse:'..'", what="a member with a '..' component")
    data = open(os.path.join(OUT, "gnutar-gnu.tar"), "rb").read()
    raw("truncated-in-member.tar", data[:512 * 40 + 100], expect="refuse:ends inside a member",
        what="cut inside a member")

    shutil.rmtree(WORK)
    with open(os.path.join(OUT, "index.tsv"), "w") as f:
        for row in INDEX:
            f.write("\t".join(row) + "\n")
    print(f"{len(INDEX)} archives in {OUT}")


if __name__ == "__main__":
    main()
