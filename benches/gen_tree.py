#!/usr/bin/env python3
"""Deterministic workload generator for benches/deploy.sh (issue 5).

Writes an app-like tree OUT/v1 and its successor OUT/v2 (1 % of the files changed in
content and mtime, 0.5 % added, 0.5 % removed), plus OUT/summary.json.

    python3 benches/gen_tree.py --out DIR [--seed S] [--files N] [--mb M] [--no-v2]

The same seed and parameters give byte-identical trees (contents, modes, mtimes, symlinks),
hence byte-identical archives when they are packed with
`tar --sort=name --format=gnu --owner=0 --group=0 --numeric-owner` and `gzip -n`.
(Determinism holds for a given Python 3 minor version: it relies on `random.Random`
seeded with a string.)  Only the standard library is used.

The tree: nested directories under app/, lib/, config/, bin/, public/assets/,
vendor/bundle/.../gems/, node_modules/, ...; a log-normal size mix (median a few KB, a tail of
multi-MB files, a few empty ones), scaled so the total is M MB; three kinds of content:
code-like text (gzip ratio ~0.3), incompressible binary (images, fonts, archives) and mixed
binary (shared objects: text, random and zero blocks), proportioned so that `gzip -6` of the
whole tar comes out near 0.6 of its size, like a real application with its assets; a few
symlinks (to files and to directories) with relative targets. File mtimes are fixed integer
seconds (tar stores seconds), so a tree extracted from the archive equals the generated one.
"""

import argparse
import json
import math
import os
import random
import sys

T0 = 1_700_000_000  # v1 mtimes are before this (2023-11-14)
T1 = T0 + 86_400  # v2 changes happen a day later
POOL_BYTES = 24 << 20  # size of the shared code-text pool files are sliced from

ROOTS = [
    "app/models", "app/controllers", "app/views", "app/helpers", "app/jobs",
    "lib", "config", "bin", "db/migrate", "spec", "locale",
    "public/assets/images", "public/assets/fonts", "public/assets/js", "public/assets/css",
    "vendor/bundle/ruby/3.2.0/gems", "node_modules",
]
KEYWORDS = [
    "def", "end", "class", "module", "return", "if", "else", "elsif", "unless", "do",
    "function", "const", "let", "var", "import", "export", "from", "require", "self",
    "this", "new", "nil", "null", "true", "false", "async", "await", "for", "in", "while",
    "yield", "private", "public", "static", "struct", "impl", "fn", "pub", "use", "match",
]
PUNCT = [" ", " ", " ", " ", ".", "(", ", ", " = ", "_", ")", " => ", "::", ": ", " + ", "[", "]"]
EXT = {
    "text": [".rb", ".js", ".ts", ".py", ".css", ".scss", ".html", ".erb", ".json", ".yml",
             ".md", ".txt", ".map", ".po"],
    "bin": [".png", ".jpg", ".gif", ".woff2", ".webp", ".gz", ".ico", ".jar"],
    "mixed": [".so", ".node", ".wasm", ".pyc", ".bin", ".dat"],
}
SYLL = ["ka", "ro", "mi", "tel", "on", "ar", "ex", "qu", "is", "ven", "dor", "al", "str",
        "ch", "pa", "ly", "ze", "ba", "ni", "cu", "ol", "ret", "gen", "act", "ion", "ser",
        "vi", "ce", "mod", "el", "han", "dle", "cfg", "buf", "io", "net", "ut", "il"]


def ident(rng):
    n = rng.choice((1, 2, 2, 3, 3, 4))
    return "".join(rng.choice(SYLL) for _ in range(n))


def make_text_pool(rng, nbytes):
    """Code-like text: identifiers with a Zipf-ish frequency, keywords, punctuation,
    indentation, string literals, numbers and a few hex hashes (lock files, source maps)."""
    vocab = sorted({ident(rng) for _ in range(9000)})
    rng.shuffle(vocab)
    words = vocab + KEYWORDS
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(vocab))] + [40.0] * len(KEYWORDS)
    out = []
    total = 0
    while total < nbytes:
        batch = rng.choices(words, weights, k=20000)
        i = 0
        lines = []
        while i < len(batch):
            n = rng.randint(1, 11)
            parts = batch[i:i + n]
            i += n
            r = rng.random()
            if r < 0.06:
                line = "# " + " ".join(parts)
            elif r < 0.10:
                line = '"%s": "%032x",' % (parts[0], rng.getrandbits(128))
            elif r < 0.16:
                line = "%s = %d" % (parts[0], rng.randrange(100000))
            else:
                line = "".join(p + rng.choice(PUNCT) for p in parts)
            lines.append(" " * (2 * rng.choice((0, 1, 1, 2, 2, 3, 4))) + line)
        chunk = ("\n".join(lines) + "\n").encode()
        out.append(chunk)
        total += len(chunk)
    return b"".join(out)[:nbytes]


class Gen:
    def __init__(self, seed, nfiles, total_bytes):
        self.seed = seed
        self.nfiles = nfiles
        self.total = total_bytes
        self.pool = make_text_pool(random.Random(f"{seed}:pool"), POOL_BYTES)
        self.next_cid = 0

    # ---- content -------------------------------------------------------------------
    def text(self, r, size):
        pool = self.pool
        out = []
        while size > 0:
            off = r.randrange(len(pool))
            take = min(size, len(pool) - off)
            out.append(pool[off:off + take])
            size -= take
        return b"".join(out)

    def content(self, e):
        r = random.Random(f"{self.seed}:c:{e['cid']}")
        size = e["size"]
        kind = e["ctype"]
        if kind == "text":
            return self.text(r, size)
        if kind == "bin":
            return r.randbytes(size)
        out = []  # mixed: 4 KiB blocks of text, random and zero/pattern data
        left = size
        while left > 0:
            n = min(4096, left)
            x = r.random()
            if x < 0.45:
                out.append(self.text(r, n))
            elif x < 0.8:
                out.append(r.randbytes(n))
            else:
                pat = r.randbytes(r.choice((1, 4, 8, 16)))
                out.append((pat * (n // len(pat) + 1))[:n])
            left -= n
        return b"".join(out)

    def cid(self):
        self.next_cid += 1
        return self.next_cid

    # ---- layout --------------------------------------------------------------------
    def sizes(self, rng, n, total):
        raw = [rng.lognormvariate(0.0, 1.75) for _ in range(n)]
        for i in rng.sample(range(n), n // 100):  # ~1 % empty files (.keep, __init__.py)
            raw[i] = 0.0
        cap = 24 << 20
        for _ in range(3):  # rescale after capping so the total stays close to `total`
            free = sum(x for x in raw if x * 1.0 < cap)
            capped = sum(1 for x in raw if x >= cap)
            scale = max(0.0, total - capped * cap) / free if free else 0.0
            raw = [min(x * scale, cap) if x < cap else cap for x in raw]
        return [int(x) for x in raw]

    def ctype(self, rng, size):
        x = rng.random()
        if size < 4096:
            return "text" if x < 0.88 else ("bin" if x < 0.98 else "mixed")
        if size < 65536:
            return "text" if x < 0.62 else ("bin" if x < 0.88 else "mixed")
        return "text" if x < 0.32 else ("bin" if x < 0.76 else "mixed")

    def new_file(self, rng, d, size, mtime, used):
        ctype = self.ctype(rng, size)
        ext = rng.choice(EXT[ctype])
        while True:
            name = ident(rng) + ("_" + ident(rng) if rng.random() < 0.4 else "") + ext
            if (d, name) not in used:
                break
        used.add((d, name))
        mode = 0o644
        if d == "bin" or d.startswith("bin/") or ext in (".so", ".node") or rng.random() < 0.01:
            mode = 0o755
        path = f"{d}/{name}"
        return path, {"t": "f", "size": size, "ctype": ctype, "cid": self.cid(),
                      "mode": mode, "mtime": mtime}

    def v1(self):
        rng = random.Random(f"{self.seed}:layout")
        dirs = {}
        for root in ROOTS:
            parts = root.split("/")
            for i in range(1, len(parts) + 1):
                dirs["/".join(parts[:i])] = None
        ndirs = max(len(dirs) + 5, self.nfiles // 11)
        dlist = sorted(dirs)
        while len(dlist) < ndirs:
            parent = rng.choice(dlist)
            if parent.count("/") >= 9:
                continue
            name = ident(rng)
            if parent.endswith("gems") or parent.endswith("node_modules"):
                name += "-%d.%d.%d" % (rng.randrange(8), rng.randrange(20), rng.randrange(10))
            d = f"{parent}/{name}"
            if d not in dirs:
                dirs[d] = None
                dlist.append(d)
        self.dweights = [rng.paretovariate(1.3) for _ in dlist]
        self.dlist = dlist
        entries = {}
        for d in dlist:
            entries[d] = {"t": "d", "mode": 0o755, "mtime": T0 - rng.randrange(86400 * 60)}
        used = set()
        for size in self.sizes(rng, self.nfiles, self.total):
            d = rng.choices(dlist, self.dweights)[0]
            path, e = self.new_file(rng, d, size, T0 - rng.randrange(86400 * 90), used)
            entries[path] = e
        self.used = used
        files = sorted(p for p, e in entries.items() if e["t"] == "f")
        self.link_targets = set()
        for _ in range(max(2, self.nfiles // 300)):
            target = rng.choice(files)
            d, name = target.rsplit("/", 1)
            stem, dot, ext = name.partition(".")
            link = f"{d}/{stem}-latest{dot}{ext}"
            if link in entries:
                continue
            entries[link] = {"t": "l", "target": name, "mtime": T0 - rng.randrange(86400)}
            self.link_targets.add(target)
        entries["vendor/bundle/ruby/current"] = {"t": "l", "target": "3.2.0", "mtime": T0}
        entries["public/assets/latest"] = {"t": "l", "target": "js", "mtime": T0}
        entries["."] = {"t": "d", "mode": 0o755, "mtime": T0}
        return entries

    def v2(self, v1):
        rng = random.Random(f"{self.seed}:v2")
        v2 = {p: dict(e) for p, e in v1.items()}
        files = sorted(p for p, e in v1.items() if e["t"] == "f")
        n = len(files)
        nchg, nadd, nrm = round(n * 0.01), round(n * 0.005), round(n * 0.005)
        changed = rng.sample(files, nchg)
        for p in changed:
            e = v2[p]
            if rng.random() < 0.5:  # half keep their size: only content and mtime differ
                e["size"] = max(1, int(e["size"] * rng.uniform(0.8, 1.25)) + rng.randrange(64))
            e["cid"] = self.cid()
            e["mtime"] = T1 + rng.randrange(3600)
        cset = set(changed)
        candidates = [p for p in files if p not in cset and p not in self.link_targets]
        removed = rng.sample(candidates, nrm)
        touched = set()
        for p in removed:
            del v2[p]
            touched.add(p.rsplit("/", 1)[0])
        newdir = f"app/models/{ident(rng)}feature"
        v2[newdir] = {"t": "d", "mode": 0o755, "mtime": T1}
        self.dlist.append(newdir)
        self.dweights.append(max(self.dweights) if self.dweights else 1.0)
        for size in self.sizes(rng, nadd, max(1, self.total * nadd // max(1, self.nfiles))):
            d = rng.choices(self.dlist, self.dweights)[0]
            path, e = self.new_file(rng, d, size, T1 + rng.randrange(3600), self.used)
            v2[path] = e
            touched.add(d)
        for d in touched:
            v2[d]["mtime"] = T1 + 3600
        v2["app/models"]["mtime"] = T1 + 3600
        return v2, {"changed": nchg, "added": nadd, "removed": nrm}

    # ---- writing -------------------------------------------------------------------
    def write(self, entries, root):
        os.makedirs(root, exist_ok=False)
        for p in sorted(p for p, e in entries.items() if e["t"] == "d"):
            if p != ".":
                os.makedirs(os.path.join(root, p), exist_ok=True)
        for p in sorted(entries):
            e = entries[p]
            full = os.path.join(root, p)
            if e["t"] == "f":
                with open(full, "wb") as f:
                    f.write(self.content(e))
                os.chmod(full, e["mode"])
                os.utime(full, (e["mtime"], e["mtime"]))
            elif e["t"] == "l":
                os.symlink(e["target"], full)
                os.utime(full, (e["mtime"], e["mtime"]), follow_symlinks=False)
        # directories last, deepest first, so creating their entries does not move mtimes
        for p in sorted((p for p, e in entries.items() if e["t"] == "d"),
                        key=lambda p: (-(p.count("/") + (p != ".")), p)):
            e = entries[p]
            full = os.path.normpath(os.path.join(root, p))
            os.chmod(full, e["mode"])
            os.utime(full, (e["mtime"], e["mtime"]))


def stats(entries):
    f = [e for e in entries.values() if e["t"] == "f"]
    return {"files": len(f), "bytes": sum(e["size"] for e in f),
            "dirs": sum(1 for e in entries.values() if e["t"] == "d"),
            "symlinks": sum(1 for e in entries.values() if e["t"] == "l")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory to create v1/ and v2/ in")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--files", type=int, default=20000, help="regular files in v1")
    ap.add_argument("--mb", type=float, default=None,
                    help="total MB (10^6 bytes) of file data in v1 (default 12.5 per 1000 files)")
    ap.add_argument("--no-v2", action="store_true", help="write only v1")
    a = ap.parse_args()
    total = int((a.mb if a.mb is not None else a.files * 0.0125) * 1_000_000)
    g = Gen(a.seed, a.files, total)
    v1 = g.v1()
    os.makedirs(a.out, exist_ok=True)
    summary = {"seed": a.seed, "v1": stats(v1)}
    print(f"gen_tree: writing v1 ({summary['v1']['files']} files, "
          f"{summary['v1']['bytes'] / 1e6:.0f} MB)", file=sys.stderr)
    g.write(v1, os.path.join(a.out, "v1"))
    if not a.no_v2:
        v2, delta = g.v2(v1)
        summary["v2"] = stats(v2)
        summary["delta"] = delta
        print(f"gen_tree: writing v2 ({delta})", file=sys.stderr)
        g.write(v2, os.path.join(a.out, "v2"))
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
