#!/usr/bin/env python3
"""Writes the seed corpus of the six fuzz targets into fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/make_seeds.py` (needs gzip and zstd on PATH).
Idempotent: the seed names are fixed (seed-*), so rerunning overwrites them and leaves
the files libFuzzer added (named by their sha1) alone. Every seed is < 10 KB.
"""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
ABS_SENTINEL = "/tmp/stretcher-fuzz-outside"  # the unpack target checks it stays empty

tarfile.RECORDSIZE = 512  # no padding to 10 KiB: seeds stay small


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 10 * 1024, (target, name, len(data))
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- unpack: tar archives ----

def member(name, kind=tarfile.REGTYPE, data=b"", link="", mode=None, **kw):
    return (name, kind, data, link, mode, kw)


def tar(members, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as t:
        for name, kind, data, link, mode, kw in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.mtime = 1704164645
            ti.uname = kw.get("uname", "root")
            ti.gname = kw.get("gname", "root")
            if kind == tarfile.DIRTYPE:
                ti.mode = 0o755 if mode is None else mode
            else:
                ti.mode = 0o644 if mode is None else mode
            ti.linkname = link
            if "pax" in kw:
                ti.pax_headers = kw["pax"]
            if "devmajor" in kw:
                ti.devmajor, ti.devminor = kw["devmajor"], kw["devminor"]
            if kind == tarfile.REGTYPE:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return buf.getvalue()


D, F, SYM, LNK = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
UNPACK = {
    "plain": [member("./", D), member("./bar", data=b"bar\n"), member("./foo/", D),
              member("./foo/baz", data=b"baz\n", mode=0o755)],
    "no-top": [member("bar", data=b"bar\n"), member("foo/baz", data=b"baz\n")],
    "symlink-dir-escape": [member("l", SYM, link="../outside"), member("l/x", data=b"x\n")],
    "symlink-dir-escape-dir": [member("l", SYM, link="../outside"), member("l/d/", D)],
    "symlink-abs": [member("l", SYM, link=ABS_SENTINEL), member("l/x", data=b"x\n"),
                    member("l/d", D)],
    "symlink-chain": [member("a", SYM, link="b"), member("b", SYM, link="c"),
                      member("c", SYM, link="../outside"), member("a/x", data=b"x\n")],
    "symlink-file-overwrite": [member("v", SYM, link="../victim"),
                               member("v", data=b"overwrite\n")],
    "dir-then-symlink": [member("d/", D), member("d/f", data=b"f\n"),
                         member("d", SYM, link="../outside"), member("d/g", data=b"g\n")],
    "symlink-then-dir": [member("d", SYM, link="../outside"), member("d/", D),
                         member("d/g", data=b"g\n")],
    "hardlink-outside": [member("h", LNK, link="../victim"), member("h2", LNK, link="/etc/passwd")],
    "hardlink-through-symlink": [member("l", SYM, link=".."), member("h", LNK, link="l/victim"),
                                 member("h", data=b"w\n")],
    "hardlink-to-symlink": [member("l", SYM, link="../outside"), member("h", LNK, link="l"),
                            member("h/x", data=b"x\n")],
    "hardlink-ok": [member("a", data=b"a\n"), member("d/b", LNK, link="a"),
                    member("a", LNK, link="a")],
    "dotdot": [member("../x", data=b"x\n"), member("a/../../x", data=b"x\n")],
    "dotdot-late": [member("ok", data=b"ok\n"), member("./../outside/x", data=b"x\n")],
    "absolute": [member("/abs/file", data=b"abs\n"), member("/", D)],
    "long-names": [member("d" * 90 + "/" + "n" * 120, data=b"long\n"),
                   member("s" * 150, SYM, link="t" * 200),
                   member("h" * 130, LNK, link="d" * 90 + "/" + "n" * 120)],
    "modes": [member("ro/", D, mode=0o500), member("ro/f", data=b"f\n", mode=0o4755),
              member("none/", D, mode=0), member("none/sub/", D, mode=0o000),
              member("x", data=b"", mode=0o7777)],
    "special": [member("fifo", tarfile.FIFOTYPE), member("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
                member("blk", tarfile.BLKTYPE, devmajor=7, devminor=0)],
    "replace": [member("a", data=b"file\n"), member("a/", D), member("a/b", data=b"b\n"),
                member("a", data=b"file again\n"), member("a", SYM, link="a")],
    "non-utf8": [member("caf\udce9/\udcff\udcfe", data=b"bytes\n"), member("l\udce9", SYM, link="caf\udce9")],
    "nul-in-link": [member("l", SYM, link="")],
}
UNPACK_PAX = {
    "pax": [member("p/" + "x" * 120, data=b"pax\n",
                   pax={"mtime": "1704164645.123456789", "uname": "nobody", "gname": "nogroup"}),
            member("q", SYM, link="../" + "y" * 110, pax={"linkpath": "../outside"})],
    "pax-path-escape": [member("safe", data=b"x\n", pax={"path": "../outside/x"})],
}


def put_tar(name, data):
    put("unpack", name + ".tar", data)


def compress(cmd, data):
    return subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=True).stdout


def unpack_seeds():
    archives = {k: tar(v) for k, v in UNPACK.items()}
    archives.update({k: tar(v, tarfile.PAX_FORMAT) for k, v in UNPACK_PAX.items()})
    archives["ustar"] = tar(UNPACK["plain"], tarfile.USTAR_FORMAT)
    for k, v in archives.items():
        put_tar(k, v)
    # V7-style directory: a regular entry whose name ends in '/'.
    v7 = bytearray(tar([member("olddir/", data=b""), member("olddir/f", data=b"f\n")]))
    put_tar("v7-dir", bytes(v7))
    put("unpack", "empty.tar", b"\0" * 1024)
    put("unpack", "truncated.tar", archives["plain"][:700])
    put("unpack", "plain.tar.gz", compress(["gzip", "-n", "-9"], archives["plain"]))
    put("unpack", "symlink-dir-escape.tar.gz",
        compress(["gzip", "-n", "-9"], archives["symlink-dir-escape"]))
    put("unpack", "two-members.tar.gz",
        compress(["gzip", "-n"], archives["plain"][:1024]) +
        compress(["gzip", "-n"], archives["plain"][1024:]))
    put("unpack", "plain.tar.zst", compress(["zstd", "-q", "-19", "-c"], archives["plain"]))
    put("unpack", "dotdot.tar.zst", compress(["zstd", "-q", "-c"], archives["dotdot"]))
    put("unpack", "hardlink-outside.tar.zst",
        compress(["zstd", "-q", "-c"], archives["hardlink-outside"]))
    # The repo's own fixture archives, GNU tar made (cut at the end-of-archive padding).
    for f in ["test.tar", "test_no_top_dir.tar"]:
        with open(os.path.join(ROOT, "fixtures", "archives", f), "rb") as fh:
            data = fh.read().rstrip(b"\0")
        data += b"\0" * (-len(data) % 512) + b"\0" * 1024
        put("unpack", "fixture-" + f, data)
    with open(os.path.join(ROOT, "fixtures", "demo", "app.tar.gz"), "rb") as fh:
        put("unpack", "fixture-app.tar.gz", fh.read())
    archive_quirk_seeds(archives["plain"])


# Reproducible pax headers (no atime / ctime, a fixed name).
PAX_FIXED = "--pax-option=delete=atime,delete=ctime,exthdr.name=%d/PaxHeaders/%f"


def archive_quirk_seeds(plain):
    """Issue 12: xz, bzip2, pzstd, zstd frames, gzip padding, sparse members in every
    format, and the header quirks of tests/integration/make_corpus.py."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import make_corpus as mc

    put("unpack", "plain.tar.xz", compress(["xz", "-c"], plain))
    put("unpack", "plain.tar.bz2", compress(["bzip2", "-c"], plain))
    put("unpack", "plain.tar.pzstd", compress(["pzstd", "-q", "-c", "-p", "1"], plain))
    put("unpack", "two-frames.tar.zst",
        compress(["zstd", "-q", "-c"], plain[:1024]) + compress(["zstd", "-q", "-c"], plain[1024:]))
    put("unpack", "two-streams.tar.xz",
        compress(["xz", "-c"], plain[:1024]) + compress(["xz", "-c"], plain[1024:]))
    put("unpack", "padded.tar.gz", compress(["gzip", "-n"], plain) + b"\0" * 1024)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "src")
        os.makedirs(src)
        with open(os.path.join(src, "sparse"), "wb") as f:
            f.write(b"head")
            f.seek(5000)
            f.write(b"middle")
            f.truncate(12000)
        for name, flags in [("sparse-gnu", ["--format=gnu"]),
                            ("sparse-pax-0.0", ["--format=posix", "--sparse-version=0.0", PAX_FIXED]),
                            ("sparse-pax-0.1", ["--format=posix", "--sparse-version=0.1", PAX_FIXED]),
                            ("sparse-pax-1.0", ["--format=posix", "--sparse-version=1.0", PAX_FIXED])]:
            out = os.path.join(d, name)
            subprocess.run(["tar", "-cSf", out, "--mtime=@1600000000", "--owner=0", "--group=0",
                            "--numeric-owner", *flags,
                            "-C", src, "sparse"], check=True)
            with open(out, "rb") as fh:
                data = fh.read().rstrip(b"\0")
                put_tar(name, data + b"\0" * (-len(data) % 512 + 1024))
    h, m, pax, END = mc.header, mc.member, mc.pax, mc.END
    blank = b" " * 7 + b"\0"
    put_tar("blank-numeric", h(b"d/", b"5", fields={(108, 116): blank, (124, 136): b" " * 11 + b"\0"})
            + m(b"d/f", b"x\n", fields={(108, 116): b"", (116, 124): b""}) + END)
    put_tar("two-long-names", mc.long_name(b"a" * 110) + mc.long_name(b"b" * 120)
            + m(b"short", b"x\n", magic=b"ustar  \0") + END)
    put_tar("two-pax", pax([(b"path", b"one")]) + pax([(b"path", b"two"), (b"path", b"three")])
            + m(b"hdr", b"x\n") + END)
    put_tar("pax-newlines", pax([(b"comment", b"a\nb\n"), (b"SCHILY.xattr.user.x", b"\n\0\n")])
            + m(b"nl", b"x\n") + END)
    put_tar("hardlink-size", m(b"f", b"abc") + h(b"h", b"1", 3, link=b"/f") + mc.pad(b"xyz") + END)
    put_tar("no-end-marker", m(b"a", b"a\n") + m(b"b", b"b\n"))
    put_tar("v7-dir-size", h(b"v/", b"0", 1, magic=b"\0" * 8) + m(b"v/f", b"abc", magic=b"\0" * 8) + END)
    put_tar("dumpdir", m(b"dd/", b"Yf\0\0", b"D", magic=b"ustar  \0") + m(b"dd/f", b"f\n") + END)
    put_tar("negative-mtime", h(b"old", b"0", 0, fields={(136, 148): b"\xff" * 12}, magic=b"ustar  \0") + END)
    put_tar("sparse-pax-lies", pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                                    (b"GNU.sparse.name", b"s"), (b"GNU.sparse.realsize", b"99999999999")])
            + m(b"GNUSparseFile.0/s", b"3\n0\n5\n100\n2\n50\n1\n".ljust(512, b"\0") + b"hello") + END)


# ---- manifest ----

SHA1 = "e0840daaa97cd2cf2175f9e5d133ffb3324a2b93"


SIGNATURES = {
    "prehashed": """untrusted comment: signature from minisign secret key
RUTKOxCE232ibZIGHTIZqZCgGusdrRJo3Bvcr/uJlu+g53xi2X+baE+3kGLjiaRUOBwcApSTWoIP2hWwYmQzklOLr3pQkGkJbQk=
trusted comment: unit test
UyKD2SlURUTKXls1lNxaFzlnDTZoZ2DMLaxwSCJbOLESwLLwoEJjJoDG4Xb460vD9vs++xtfu+06IrJNtaJQDg==
""",
    "legacy": """untrusted comment: signature from minisign secret key
RWTKOxCE232ibVloiIgVaeYyU2pT8hoyqvnB/LPJqGxDhMtLan5KEH9i7OU8YjRiSYo9kXJ5693qG6sgG0/2+UxwyI6rDSNgBwY=
trusted comment: unit test legacy
FNTuBFpweYFQz0nA0YEHb53er/OI84GUduaG0ZD/F1z2p7+3ppiMjGyyYdZ5xaH9CSdjgj8k3rVhPJRERiLsDw==
""",
    "other-key": """untrusted comment: signature from minisign secret key
RUSjEx7YLJzzt+oWWD/Q6jP3axO4o0EgMPt8gNX3HpzaDCqwCCOZFDieUcGIgykiLyATVENuVvLM8e/BUmJxFs7+DlICXV19IwA=
trusted comment: other
Ektp7TtotGnTE7ChxpC5vhJLb4XuyMIu4H3cZHzpLNYdCS7qDtmmDKC9JVs/sfPQY5Vk1z9m1Qofyw9EMMhmDQ==
""",
}


def manifest_seeds():
    put("manifest", "xz-bz2-src", ("src: https://example.com/app-{{ .Env.VERSION }}.tar.xz\n"
                                   "checksum: " + SHA1 + "\ndest: /srv/app\n").encode())
    with open(os.path.join(ROOT, "fixtures", "demo", "manifest.yml")) as fh:
        put("manifest", "demo.yml", fh.read())
    put("manifest", "minimal.yml",
        f"src: s3://example.com/app.tar.gz\nchecksum: {SHA1}\ndest: /home/stretcher/app\n")
    put("manifest", "full.yml",
        f"src: s3://example.com/app.tar.gz\nchecksum: {SHA1}\ndest: /home/stretcher/app\n"
        "dest_mode: 0711\nsync_strategy: rsync\nexcludes:\n  - \"*.pid\"\n  - \"*.socket\"\n"
        "exclude_from: exclude.list\ncommands:\n  pre:\n    - echo 'staring deploy'\n"
        "  post:\n    - echo 'deploy done'\n  success:\n    - echo 'deploy success'\n"
        "  failure:\n    - echo 'deploy failed!!'\n    - cat >> /path/to/failure.log\n")
    put("manifest", "templates.yml",
        f"src: {{{{ must_env \"SRC\" }}}}\nchecksum: {SHA1}\n"
        "dest: {{ env \"DEST\" \"/srv/default\" }}\ncommands:\n  pre:\n"
        "    - echo {{env `A`}} {{- env \"EMPTY\" \"dflt\" -}} {{/* c */}}\n"
        "    - {{ env \"UNSET\" \"A\" \"last\" }} {{ env \"UNSET\" \"a\\tb\\u00e9\" }}\n"
        "x: {{ env \"YAML\" }}\n")
    put("manifest", "mv-sha256.yml",
        "src: ./app.tar.zst\nchecksum: " + "ab" * 32 + "\nsync_strategy: mv\ndest_mode: \"0755\"\n")
    put("manifest", "sha512-unknown.yml",
        "\ufeffsrc: http://h/a.tgz\nchecksum: " + "0f" * 64 +
        "\ndest: /srv/x\nunknown_key: 1\nnested: {a: [1, 2]}\n")
    put("manifest", "md5-anchors.yml",
        "src: &s file:///tmp/a.tar\nchecksum: " + "1" * 32 +
        "\ndest: *s\ncommands: {pre: [a, b], post: null}\n")
    put("manifest", "bad-colon.yml",
        "commands:\n  success:\n    - some-commend-with-argument-includes-colon \":foo: bar\"\n")
    put("manifest", "bad-template.yml", "src: {{ env \"A\" | lower }}\ndest: {{-3}}\n{{/* x }}")
    put("manifest", "flow.yml", "{src: 'a', checksum: 1, dest: [x], excludes: !!str x}\n")
    put("manifest", "fresh.yml",
        f"src: app.tgz\nchecksum: {SHA1}\ndest: /srv/app\n"
        "expires: 2030-01-02T03:04:05+09:00\nserial: 7\n")
    put("manifest", "stale.yml", "expires: 2020-13-01T00:00:00Z\nserial: -1\n")
    # Signatures (fuzz_targets/manifest.rs): MESSAGE 0xFF .minisig, made with
    # minisign 0.11 by the target's TRUSTED_KEY (prehashed, legacy) and by another key.
    for name, sig in SIGNATURES.items():
        put("manifest", "signed-" + name, b"src: x\n\xff" + sig.encode())
    put("manifest", "signed-garbage", b"src: x\n\xffuntrusted comment: x\nRUQ=\n")


# ---- event: byte 0 = env flags (see fuzz_targets/event.rs) ----

CONSUL_TWO = json.dumps([
    {"LTime": 2, "Version": 1, "TagFilter": "", "ServiceFilter": "", "NodeFilter": "",
     "Payload": base64.b64encode(b"s3://example.com/path/to/tar.gz").decode(),
     "Name": "deploy", "ID": "1d6731a8-833c-1aff-94e5-aa5e5a77da9f"},
    {"LTime": 3, "Version": 1, "TagFilter": "", "ServiceFilter": "", "NodeFilter": "",
     "Payload": base64.b64encode(b"s3://example.com/path/to/app.tar.gz").decode(),
     "Name": "deploy", "ID": "b5ef1588-1bcd-d93f-5d9c-67cb6e8c4587"},
], indent=2)


def event_seeds():
    put("event", "line", b"\x00s3://bucket/manifest.yml\n")
    put("event", "line-path", b"\x00  ./rel/../m.yml  \nsecond line\n")
    put("event", "line-trickle", b"\x10\n\n  http://h/m.yml\r\nrest")
    put("event", "consul-list", b"\x00" + CONSUL_TWO.encode())
    put("event", "consul-index", b"\x01" + CONSUL_TWO.encode())
    put("event", "consul-unpadded", b"\x01" + json.dumps(
        [{"ID": "x", "Name": "d", "LTime": 1, "Payload": "czM6Ly9iL20ueW1s"}]).encode())
    put("event", "consul-null", b"\x01" + b'[{"ID":"x","Name":"d","LTime":1,"Payload":null}]')
    put("event", "consul-empty", b"\x01[]")
    put("event", "consul-bad-b64", b"\x01" + b'[{"ID":"","Name":"d","Payload":"!!!"}]')
    put("event", "serf-user", b"\x06  http://h/m.yml \n")
    put("event", "serf-user-noltime", b"\x02/srv/m.yml")
    put("event", "serf-member-join", b"\x03node1\t10.0.0.1\n")
    put("event", "positional", b"\x08file:///srv/m.yml")
    put("event", "positional-rel", b"\x08./a/./b//m.yml")
    put("event", "not-utf8", b"\x00\xff\xfe\n")
    put("event", "archive-formats", b"\x00s3://bucket/app.tar.bz2 http://h/app.tar.pzstd\n")


# ---- filter: exclude_from 0xFF excludes (NUL-separated) 0xFF paths (NUL-separated) ----

def filter_seeds():
    S, N = b"\xff", b"\0"
    put("filter", "from-file",
        b"# comment\n; also\n\n- *.tmp\r\n+ important.tmp\n*.bak\n" + S + S +
        N.join([b"a/important.tmp", b"x.bak", b"a/b.tmp"]))
    put("filter", "excludes",
        S + b"*.pid\0*.socket\0/top\0dir/***\0a/**/b/\0+ keep.log\0- *.log" + S +
        N.join([b"run/app.pid", b"top", b"a/top", b"dir/x/y", b"a/x/b", b"keep.log"]))
    put("filter", "classes",
        S + b"[!ab].c\0[[:digit:]]*\0a[\0a\\*b\0?.txt\0[a-c]x\0**/x\0foo**" + S +
        N.join([b"c.c", b"7up", b"a[", b"a*b", b"bx", b"q/a/b/x"]))
    put("filter", "clear", b"*\n!\n+ *\n" + S + b"!\0a*/c" + S + N.join([b"ab/x/c", b"d\xff/x\xfe.log"]))
    put("filter", "archive-names", b"*.tar.xz\n*.tar.bz2\nGNUSparseFile.*/\n" + S + S +
        N.join([b"a.tar.xz", b"GNUSparseFile.0/disk.img", b"caf\xe9.tar.bz2"]))
    put("filter", "bytes", S + b"*.c\0d?/*.log\0/\0- \0+ \0***" + S +
        N.join([b"\xff.c", b"/", b"", b"d\xff/x.log", b"//a//b/", b"./a"]))


# ---- fleet_answer: flags, name length, node name, answer (see fuzz_targets/fleet_answer.rs) ----

def brief(deploys, **extra):
    return json.dumps({"host": "web-1", "deploys": deploys, **extra}, separators=(",", ":"))


def deploy(result="success", checksum="0123456789ab", error=None, step=None, dest="/srv/app"):
    return {"dest": dest, "result": result, "checksum": checksum,
            "finished": "2026-12-01T10:00:00.000Z", "failed_step": step, "error": error}


def fleet_answer_seeds():
    def put_answer(name, answer, node=b"web-1", flags=0):
        if isinstance(answer, str):
            answer = answer.encode()
        put("fleet_answer", name, bytes([flags, len(node)]) + node + answer + b"\n")

    ok = brief([deploy()])
    put_answer("success", ok)
    put_answer("success-checksum", ok, flags=1)
    put_answer("success-checksum12-text", ok, flags=2 | 4)
    put_answer("failure", brief([deploy("failure", error="failed: ./check exit status 1",
                                        step="pre"), deploy(dest=None, checksum=None)]))
    put_answer("omitted", brief([deploy()], omitted=3), flags=4)
    put_answer("error", brief([], error="cannot read the state directory"))
    put_answer("empty", brief([]))
    # the forgeries of SPEC §17: lines of their own, control characters, wrong fields
    forged_row = "web-2  /srv/app  success  0123456789ab  2026-12-01T10:00:00.000Z  -"
    put_answer("forged-serf-line", ok + "\nResponse from 'web-2': " + ok, flags=4)
    put_answer("forged-row", ok + "\n" + forged_row)
    put_answer("escaped-newline", brief([deploy(dest="/srv/app\n" + forged_row,
                                                 error="\x1b[2K\r\x1b[1A")]), flags=4)
    put_answer("node-newline", ok, node=b"evil\n" + forged_row.encode()[:40], flags=4)
    put_answer("node-escape", ok, node=b"\x1b]0;x\x07\xc2\x85\xff")
    put_answer("checksum-non-ascii", brief([deploy(checksum="0123456789a\u00e9")]), flags=2)
    put_answer("checksum-long", brief([deploy(checksum="a" * 200)]), flags=1)
    put_answer("wrong-types", '{"host":1,"deploys":{"result":[]},"omitted":-1}')
    put_answer("not-json", "Error: no state directory")
    put_answer("not-utf8", b'{"host":"\xff\xfe","deploys":[]}')
    # SPEC §13 amended: running and interrupted deploys, a split, fields of newer answers
    running = dict(deploy("running"), finished=None, started="2026-12-01T10:05:00.000Z")
    put_answer("running", brief([running, deploy(dest="/srv/other")]))
    put_answer("interrupted", brief([deploy("interrupted")], omitted=2))
    put_answer("split", brief([deploy(), deploy(checksum="ffffffffffff")]), flags=2)
    put_answer("newer-fields", brief([dict(deploy(), manifest_url="https://example.com/a.yml",
                                           serial=7)], omitted=1))


# ---- toc: byte 0 picks raw table (0) / gzip member (1) / zstd member (2) / footer ----

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def vbytes(b):
    return varint(len(b)) + b


def toc_entry(path, kind, size=0, mode=0o644, secs=1700000000, nanos=0):
    zigzag = (secs << 1) ^ (secs >> 63)
    return (vbytes(path) + kind + varint(mode) + varint(0) + varint(0) + vbytes(b"root") +
            vbytes(b"root") + varint(zigzag) + varint(nanos) + varint(size))


def toc_file(offset, length, raw_len, data_offset, sha=b"\x07" * 32):
    return varint(0) + varint(offset) + varint(length) + varint(raw_len) + varint(data_offset) + sha


def toc_table(entries):
    return varint(1) + varint(len(entries)) + b"".join(entries)


def toc_seeds():
    import gzip as gz
    import struct
    good = toc_table([
        toc_entry(b".", varint(1), mode=0o755),
        toc_entry(b"a", varint(1), mode=0o755),
        toc_entry(b"a/x", toc_file(0, 100, 2048, 512), size=10, nanos=123456789),
        toc_entry(b"a/y", toc_file(0, 100, 2048, 1536), size=5),
        toc_entry(b"b", toc_file(100, 50, 1024, 512), size=300),
        toc_entry(b"c", varint(3) + vbytes(b"a/x")),
        toc_entry(b"d", varint(2) + vbytes(b"../up")),
    ])
    put("toc", "raw", b"\0" + good)
    put("toc", "raw-dotdot", b"\0" + toc_table([toc_entry(b"../x", varint(1))]))
    put("toc", "raw-overlap", b"\0" + toc_table([
        toc_entry(b"a", toc_file(0, 100, 1024, 512), size=10),
        toc_entry(b"b", toc_file(50, 100, 1024, 512), size=10)]))
    put("toc", "raw-dup", b"\0" + toc_table([toc_entry(b"a", varint(1)), toc_entry(b"a", varint(1))]))
    put("toc", "gzip", b"\1" + gz.compress(good, mtime=0))
    put("toc", "zstd", b"\2" + compress(["zstd", "-q", "-c"], good))
    payload = b"STRETCHR" + struct.pack("<HBB", 1, 1, 0) + struct.pack("<QQ", 10, 5)
    gzip_footer = (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", 32) + b"ST" +
                   struct.pack("<H", 28) + payload + b"\x03\x00" + b"\0" * 8)
    put("toc", "footer-gzip", b"\3" + b"t" * 15 + gzip_footer)
    payload = b"STRETCHR" + struct.pack("<HBB", 1, 2, 0) + struct.pack("<QQ", 10, 5)
    put("toc", "footer-zstd", b"\3" + b"t" * 15 + struct.pack("<II", 0x184D2A5E, 28) + payload)


if __name__ == "__main__":
    unpack_seeds()
    manifest_seeds()
    event_seeds()
    filter_seeds()
    fleet_answer_seeds()
    toc_seeds()
    for t in sorted(os.listdir(CORPUS)):
        if not os.path.isdir(os.path.join(CORPUS, t)):
            continue  # corpus/.gitignore
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} files, {size} bytes")
