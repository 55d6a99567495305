"""The training corpus: English prose already on every machine that runs Python.

CPython's own documentation text, ``pydoc_data.topics`` (the language reference sections that
``help()`` shows), followed by the docstrings of the standard library's modules, classes and
functions (tests, demos and ``site-packages`` left out), each document ending in a blank line.
Licence: PSF License Version 2 (Python's documentation and source). No download: the text comes
from the interpreter that runs the build, so its SHA-256 depends on the Python version; the
training record keeps the hash and the version it was made from.
"""

import ast
import hashlib
import pathlib
import platform
import sysconfig

__all__ = ["build_corpus", "load_corpus", "split", "LICENCE"]

LICENCE = "PSF-2.0 (Python Software Foundation License Version 2)"
_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__phello__"}


def _docstrings():
    lib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(lib.rglob("*.py")):
        if _SKIP & set(path.relative_to(lib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    yield doc


def build_corpus():
    """``(text bytes, info dict)``; the text is ASCII-clean UTF-8."""
    import pydoc_data.topics as topics
    docs = [topics.topics[k] for k in sorted(topics.topics)] + list(_docstrings())
    text = "\n\n".join(d.strip() for d in docs) + "\n"
    data = text.encode("utf-8")
    info = {"source": "CPython standard library: pydoc_data.topics, then module/class/function docstrings",
            "python": platform.python_version(), "licence": LICENCE, "bytes": len(data),
            "documents": len(docs), "sha256": hashlib.sha256(data).hexdigest()}
    return data, info


def split(data, *, block=16384, every=20):
    """Deterministic train/validation split: every ``every``-th block of ``block`` bytes is
    validation. Returns ``(train bytes, validation bytes)``."""
    train, val = bytearray(), bytearray()
    for i in range(0, len(data), block):
        (val if (i // block) % every == every - 1 else train).extend(data[i:i + block])
    return bytes(train), bytes(val)


def load_corpus(path):
    """A corpus written by ``python -m tritium.host.corpus --out PATH`` (text, and PATH.json)."""
    import json
    path = pathlib.Path(path)
    data = path.read_bytes()
    info = json.loads(pathlib.Path(str(path) + ".json").read_text())
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise ValueError(f"{path}: contents do not match the SHA-256 in {path}.json")
    return data, info


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser(description="write the training corpus and its record")
    ap.add_argument("--out", required=True)
    out = pathlib.Path(ap.parse_args().out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data, info = build_corpus()
    out.write_bytes(data)
    pathlib.Path(str(out) + ".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {out}: {info['bytes']} bytes, sha256 {info['sha256']}")
