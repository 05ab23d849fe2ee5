"""Build the real-text benchmark corpus: Debian manual pages in several languages + crawled Chinese pages.

Writes a JSONL file, one document a line: ``{"id", "lang", "text"}``.  Sources:

* the Debian packages ``manpages`` (en) and ``manpages-{de,fr,es,pl,ru,ja,zh}`` (``apt-get download``
  here, or ``--debs DIR`` holding the .deb files), read by :func:`pipeline.tools.eval_corpus.man_pages`
  (roff to text); ``--per-lang`` pages a language, a seeded sample;
* the four Chinese articles of ``../shared/corpus/seeds-zh/`` raw (page debris and HTML entities left in:
  that is what crawled text looks like), language ``zh-web``.

Usage: ``python tests/perf/build_realtext_corpus.py --out .cache/realtext-corpus.jsonl``.  The default
sample (60 pages a language) is about 5 MB, small enough to travel to the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from pipeline.tools.eval_corpus import man_pages

PACKAGES = {
    "en": "manpages",
    "de": "manpages-de",
    "fr": "manpages-fr",
    "es": "manpages-es",
    "pl": "manpages-pl",
    "ru": "manpages-ru",
    "ja": "manpages-ja",
    "zh": "manpages-zh",
}
# Where each package installs its pages under /usr/share/man ("" = the English pages themselves).
FOLDERS = {"en": "", "zh": "zh_CN"}
SEEDS_ZH = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "seeds-zh"


def _unpack(debs: Path, root: Path) -> None:
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def build(debs: Path, seeds: Path, per_lang: int, seed: int) -> list[dict[str, str]]:
    """The corpus' documents, languages in a fixed order, each language's pages a seeded sample."""
    documents: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _unpack(debs, root)
        man = root / "usr" / "share" / "man"
        for lang in PACKAGES:
            sub = FOLDERS.get(lang, lang) or None
            pages = man_pages(man, sections="12345678", max_pages=per_lang, seed=seed, lang=sub)
            documents += [{"id": f"{lang}/{page.doc_id}", "lang": lang, "text": page.text} for page in pages]
    for path in sorted(seeds.glob("*.txt")):
        documents.append({"id": f"zh-web/{path.name}", "lang": "zh-web", "text": path.read_text("utf-8")})
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/realtext-corpus.jsonl"))
    parser.add_argument("--debs", type=Path, help="folder of the .deb files (default: apt-get download)")
    parser.add_argument("--seeds", type=Path, default=SEEDS_ZH, help="folder of the raw Chinese articles")
    parser.add_argument("--per-lang", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as download:
        debs = args.debs
        if debs is None:
            debs = Path(download)
            subprocess.run(["apt-get", "download", *PACKAGES.values()], cwd=debs, check=True)
        documents = build(debs, args.seeds, args.per_lang, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for document in documents:
            out.write(json.dumps(document, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    for document in documents:
        counts[document["lang"]] = counts.get(document["lang"], 0) + 1
    print(f"{len(documents)} documents {counts}, {args.out.stat().st_size / 1e6:.1f} MB in {args.out}")


if __name__ == "__main__":
    main()
