"""The gender lexicons: `assets/lexicon/<language>.tsv` (term, class, kind), loaded and indexed by normalised form.

A lexicon file is UTF-8 text with a header line `term<TAB>class<TAB>kind`, one term per line; blank lines
and lines starting with `#` are skipped. `class` is one of CLASSES; `kind` is free text (pronoun, noun,
plural, possessive, kinship, role, ...). Every term is normalised by its language's matcher (the same
normalisation the captions get) and must be one word as that matcher reads words; two terms that
normalise to the same form are an error, so every form has exactly one class.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from layerwise.core.errors import LayerwiseError
from layerwise.lexicon import arabic, english

CLASSES = ("male", "female", "neutral")
HEADER = ("term", "class", "kind")

# language -> its matcher (normalisation, words, lookup); the names are the pipeline's language names.
MATCHERS: dict[str, ModuleType] = {"english": english, "arabic": arabic}
LANGUAGES = tuple(MATCHERS)


@dataclass(frozen=True)
class Entry:
    term: str       # as written in the lexicon file: the key of per-term counts
    cls: str        # one of CLASSES
    kind: str
    line: int       # line of the lexicon file (1 = the header)


@dataclass(frozen=True, eq=False)
class Lexicon:
    language: str
    path: Path
    sha256: str                       # of the file's bytes: reports name the exact lexicon used
    entries: tuple[Entry, ...]
    keys: dict[str, Entry]            # the matcher's normal form of each term -> entry
    loose_keys: dict[str, Entry]      # the matcher's looser normal form (Arabic: ة read as ه) -> entry
    cache: dict[str, tuple[tuple[str, Entry], ...]] = field(default_factory=dict, repr=False)  # word -> matches

    @property
    def matcher(self) -> ModuleType:
        return MATCHERS[self.language]

    def classes(self) -> dict[str, int]:
        """Number of terms per class."""
        return {c: sum(e.cls == c for e in self.entries) for c in CLASSES}


def lexicon_dir() -> Path:
    """`assets/lexicon/` of the repository this package lives in (as assets/prompts.json is found)."""
    return Path(__file__).resolve().parents[2] / "assets" / "lexicon"


def check_language(language: str) -> str:
    if language not in MATCHERS:
        raise LayerwiseError(f"no gender lexicon for language {language!r}: supported languages are "
                             f"{', '.join(LANGUAGES)} (a new language needs assets/lexicon/<language>.tsv "
                             "and a matcher in layerwise/lexicon/)")
    return language


def load_lexicon(language: str, path: str | Path | None = None) -> Lexicon:
    """The lexicon of `language` (default file: assets/lexicon/<language>.tsv), checked and indexed; cached."""
    check_language(language)
    path = Path(path) if path is not None else lexicon_dir() / f"{language}.tsv"
    return _load(language, path.resolve())


@lru_cache(maxsize=16)
def _load(language: str, path: Path) -> Lexicon:
    matcher = MATCHERS[language]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LayerwiseError(f"cannot read the {language} lexicon {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayerwiseError(f"lexicon {path} is not UTF-8 text (byte {exc.start})") from None
    lines = [(n, raw.rstrip("\r")) for n, raw in enumerate(text.split("\n"), start=1)]
    lines = [(n, raw) for n, raw in lines if raw.strip() and not raw.lstrip().startswith("#")]
    if not lines or tuple(c.strip().lower() for c in lines[0][1].split("\t")) != HEADER:
        got = lines[0][1] if lines else "(nothing)"
        raise LayerwiseError(f"lexicon {path}: the first line must be the header "
                             f"'{chr(9).join(HEADER)}' (tab-separated); it is {got!r}")
    entries: list[Entry] = []
    keys: dict[str, Entry] = {}
    loose_keys: dict[str, Entry] = {}
    for n, raw in lines[1:]:
        cells = [c.strip() for c in raw.split("\t")]
        if len(cells) != len(HEADER):
            raise LayerwiseError(f"lexicon {path} line {n}: {len(cells)} tab-separated fields, expected "
                                 f"{len(HEADER)} ({', '.join(HEADER)}): {raw!r}")
        term, cls, kind = cells
        if cls not in CLASSES:
            raise LayerwiseError(f"lexicon {path} line {n}: class {cls!r} of {term!r} is not one of {', '.join(CLASSES)}")
        if not term or not kind:
            raise LayerwiseError(f"lexicon {path} line {n}: empty term or kind: {raw!r}")
        problem = matcher.term_problem(term)
        if problem:
            raise LayerwiseError(f"lexicon {path} line {n}: term {term!r} {problem}")
        entry = Entry(term=term, cls=cls, kind=kind, line=n)
        for index, key in ((keys, matcher.key(term)), (loose_keys, matcher.loose_key(term))):
            other = index.get(key)
            if other is not None:
                raise LayerwiseError(f"lexicon {path} line {n}: term {term!r} is the same word as {other.term!r} "
                                     f"(line {other.line}) after normalisation ({key!r}); keep one of them")
            index[key] = entry
        entries.append(entry)
    if not entries:
        raise LayerwiseError(f"lexicon {path} has no terms (only a header line)")
    return Lexicon(language=language, path=path, sha256=hashlib.sha256(data).hexdigest(), entries=tuple(entries),
                   keys=keys, loose_keys=loose_keys)
