"""Rebuild the held-out retrieval corpora (bench/data/heldout/<set>/corpus.jsonl.gz) from
the Debian packages they come from. Run by hand, never by the tests:

    cd /tmp/deb && apt-get download manpages-de debian-faq-de
    .venv/bin/python bench/heldout_build.py [--deb-dir /tmp/deb] [--sets manpages-de,...]

Needs `dpkg-deb` and `groff` (Debian: groff-base). The output is byte-for-byte the same for
the same .deb files (sorted input, gzip without name or time); a .deb whose sha256 differs
from the one recorded in SOURCE.md is refused unless --any-version is given.

manpages-de: every regular page (not a symlink) of man1 and man8, rendered with
`groff -k -Tutf8 -mandoc -rLL=100n -rHY=0 -P-c -P-b -P-u` (no hyphenation, no overstrikes),
running header and footer lines dropped and runs of spaces inside a line collapsed; kept
when the rendered text is between MIN_CHARS and MAX_CHARS characters (the rule that fixes the
subset; decided before any question or search result existed). title = the BEZEICHNUNG
(NAME) line, see_also = every `name(section)` in the SIEHE AUCH section, raw.

debian-faq-de: one document per <section> of the Debian FAQ's German HTML chapters that has
its own heading and direct text (id = the section's anchor id, title = its heading without
the number, text = its own paragraphs, lists and examples, not those of nested sections).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "data" / "heldout"

PACKAGES = {
    "manpages-de": (
        "manpages-de_4.18.1-1_all.deb",
        "37d2e7ee51f22952aecec3af93647ff59194a3c74bb7a694560f49c7f7ab3978",
    ),
    "debian-faq-de": (
        "debian-faq-de_11.1_all.deb",
        "e9a8d8234f4b182660d521f80f50cea87f797b4541005a3d64fab7777766f6de",
    ),
}
MAN_SECTIONS = ("man1", "man8")
MIN_CHARS = 3000
MAX_CHARS = 12000
GROFF = ["groff", "-k", "-Tutf8", "-mandoc", "-rLL=100n", "-rHY=0", "-P-c", "-P-b", "-P-u"]
_OVERSTRIKE = re.compile(r".\x08")
_RUNNING_HEADER = re.compile(r"^\S+\(\w+\)\s.*\S+\(\w+\)$")
_RUNNING_FOOTER = re.compile(r"\s{3,}\S+\(\w+\)$")
_REF = re.compile(r"([A-Za-z0-9_.:+\[-]+)\(([0-9][a-z]*)\)")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract(deb: Path, expected: str, any_version: bool, into: Path) -> None:
    digest = sha256(deb)
    if digest != expected and not any_version:
        sys.exit(f"{deb}: sha256 {digest} is not the recorded {expected} (--any-version)")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)


def write_corpus(name: str, records: list[dict]) -> Path:
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "corpus.jsonl.gz"
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(body.encode("utf-8"))
    target.write_bytes(buf.getvalue())
    return target


# manpages-de ------------------------------------------------------------------------------


def render_man(page: Path) -> str:
    src = gzip.decompress(page.read_bytes())
    out = subprocess.run(
        GROFF,
        input=src,
        capture_output=True,
        check=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    ).stdout.decode("utf-8", "replace")
    lines = _OVERSTRIKE.sub("", out).splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    # The running header "LS(1)  Dienstprogramme für Benutzer  LS(1)" and the footer
    # "GNU coreutils 9.1  September 2022  LS(1)" (mdoc pages render without them).
    if lines and _RUNNING_HEADER.match(lines[0]):
        lines.pop(0)
    if lines and _RUNNING_FOOTER.search(lines[-1]):
        lines.pop()
    clean = []
    for ln in lines:
        indent = len(ln) - len(ln.lstrip(" "))
        clean.append((" " * indent + re.sub(r" {2,}", " ", ln.strip())).rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(clean)).strip() + "\n"


def sections(text: str) -> dict[str, str]:
    """Top-level sections of a rendered page: headings are the unindented lines."""
    out: dict[str, list[str]] = {}
    current = ""
    for ln in text.splitlines():
        if ln.strip() and not ln.startswith(" "):
            current = ln.strip()
            out.setdefault(current, [])
        elif current:
            out[current].append(ln)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def man_record(page: Path) -> dict | None:
    stem = page.name.removesuffix(".gz")  # ls.1
    text = render_man(page)
    secs = sections(text)
    name = next((v for k, v in secs.items() if k.upper() in ("BEZEICHNUNG", "NAME")), "")
    title = " ".join(name.split("\n\n")[0].split()) or stem
    see_also: list[str] = []
    for key, body in secs.items():
        if key.upper().startswith("SIEHE AUCH"):
            for n, s in _REF.findall(body.replace("\u2010", "-")):
                ref = f"{n}({s})"
                if ref not in see_also:
                    see_also.append(ref)
    return {"id": stem, "title": title, "text": text, "see_also": see_also}


def build_manpages(root: Path) -> list[dict]:
    records = []
    base = root / "usr/share/man/de"
    for sec in MAN_SECTIONS:
        for page in sorted((base / sec).glob("*.gz")):
            if page.is_symlink():
                continue
            rec = man_record(page)
            if rec and MIN_CHARS <= len(rec["text"]) <= MAX_CHARS:
                records.append(rec)
    return records


# debian-faq-de ----------------------------------------------------------------------------

_NUMBER = re.compile(r"^\s*(\d+(\.\d+)*)\.?\s+")


_FAQ_BLOCKS = ["p", "li", "dt", "dd", "pre", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "br"]


def _is_section(tag) -> bool:
    return getattr(tag, "name", None) == "div" and "section" in (tag.get("class") or [])


def faq_text(section) -> str:
    """The section's own text: its children except the title block and nested sections."""
    parts = []
    for child in section.children:
        if _is_section(child):
            continue
        if getattr(child, "name", None) == "div" and "titlepage" in (child.get("class") or []):
            continue
        get = getattr(child, "get_text", None)
        parts.append(get() if get else str(child))
    lines = [ln.strip() for ln in "".join(parts).splitlines()]
    return "\n".join(ln for ln in lines if ln)


def build_faq(root: Path) -> list[dict]:
    from bs4 import BeautifulSoup

    folder = root / "usr/share/doc/debian/FAQ/de"
    records = []
    seen = set()
    for page in sorted(folder.glob("*.de.html")):
        if page.name in ("index.de.html", "faqinfo.de.html"):
            continue
        soup = BeautifulSoup(page.read_text("utf-8"), "html.parser")
        # Source line breaks are not text: whitespace runs become one space (outside <pre>),
        # and block elements start and end a line.
        for node in soup.find_all(string=True):
            if node.find_parent("pre") is None:
                node.replace_with(re.sub(r"\s+", " ", str(node)))
        for block in soup.find_all(_FAQ_BLOCKS):
            block.insert_before("\n")
            block.insert_after("\n")
        for sec in soup.find_all(_is_section):
            heading = next(
                (
                    h
                    for h in sec.find_all(["h1", "h2", "h3", "h4", "h5", "h6"])
                    if h.find_parent(_is_section) is sec
                ),
                None,
            )
            if heading is None:
                continue
            anchor_tag = heading.find("a", id=True)
            anchor = sec.get("id") or (anchor_tag["id"] if anchor_tag else None)
            if not anchor or anchor in seen:
                continue
            title = _NUMBER.sub("", " ".join(heading.get_text(" ").split()))
            text = faq_text(sec)
            if len(text) < 40:
                continue
            seen.add(anchor)
            links = []
            for a in sec.find_all("a", href=True):
                if a.find_parent(_is_section) is not sec or "#" not in a["href"]:
                    continue
                target = a["href"].split("#", 1)[1]
                if a["href"].startswith(("http:", "https:")) or not target:
                    continue
                if target != anchor and target not in links:
                    links.append(target)
            records.append(
                {
                    "id": anchor,
                    "title": title,
                    "text": text,
                    "chapter": page.name.split(".")[0],
                    "see_also": links,
                }
            )
    return records


BUILDERS = {"manpages-de": build_manpages, "debian-faq-de": build_faq}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb-dir", default="/tmp/deb")
    ap.add_argument("--sets", default=",".join(PACKAGES))
    ap.add_argument("--any-version", action="store_true")
    args = ap.parse_args()
    for name in args.sets.split(","):
        deb_name, digest = PACKAGES[name]
        with tempfile.TemporaryDirectory(prefix="clara-heldout-") as tmp:
            extract(Path(args.deb_dir) / deb_name, digest, args.any_version, Path(tmp))
            records = BUILDERS[name](Path(tmp))
        target = write_corpus(name, records)
        chars = sum(len(r["text"]) for r in records)
        print(
            f"{name}: {len(records)} documents, {chars / 1e6:.2f} M characters of text → "
            f"{target.relative_to(ROOT)} ({target.stat().st_size / 1e3:.0f} kB, "
            f"sha256 {sha256(target)[:16]})"
        )


if __name__ == "__main__":
    main()
