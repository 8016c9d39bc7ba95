"""Counting the lexicon's terms in a text: `count_terms(text, language) -> Counts`."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from layerwise.lexicon.terms import CLASSES, Entry, Lexicon, load_lexicon


@dataclass(frozen=True)
class Match:
    word: str       # the word of the text, normalised (a hyphenated word's part when only that part matched)
    term: str       # the lexicon's term (as written in the lexicon file)
    cls: str        # male | female | neutral
    kind: str


@dataclass(frozen=True)
class Counts:
    """Matches of one language's lexicon in one text (or, summed with +, in several)."""
    language: str
    words: int                         # words read (each hyphenated or apostrophe word is one)
    by_class: dict[str, int]           # every class of CLASSES, 0 when absent
    by_term: dict[str, int]            # lexicon term -> occurrences (matched terms only)
    matches: tuple[Match, ...] = ()    # in text order

    @property
    def male(self) -> int:
        return self.by_class["male"]

    @property
    def female(self) -> int:
        return self.by_class["female"]

    @property
    def neutral(self) -> int:
        return self.by_class["neutral"]

    def terms_of(self, cls: str) -> list[str]:
        """The distinct terms of class `cls` matched, in text order."""
        return list(dict.fromkeys(m.term for m in self.matches if m.cls == cls))

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        if other.language != self.language:
            raise ValueError(f"cannot add counts of {self.language} and {other.language}")
        return Counts(language=self.language, words=self.words + other.words,
                      by_class={c: self.by_class[c] + other.by_class[c] for c in CLASSES},
                      by_term=dict(Counter(self.by_term) + Counter(other.by_term)),
                      matches=self.matches + other.matches)

    @classmethod
    def empty(cls, language: str) -> Counts:
        return cls(language=language, words=0, by_class=dict.fromkeys(CLASSES, 0), by_term={})


def lookup_word(word: str, lexicon: Lexicon) -> tuple[tuple[str, Entry], ...]:
    """The (word, entry) matches of one normalised word; memoised per lexicon (captions repeat their words)."""
    found = lexicon.cache.get(word)
    if found is None:
        found = tuple(lexicon.matcher.lookup(word, lexicon.keys, lexicon.loose_keys))
        lexicon.cache[word] = found
    return found


def count_terms(text: str, language: str, lexicon: Lexicon | None = None) -> Counts:
    """Per-class and per-term counts of the gender lexicon's terms in `text`, and its number of words.

    `language`: english or arabic (the pipeline's language names); another raises LayerwiseError.
    `lexicon`: default load_lexicon(language).
    """
    lexicon = lexicon if lexicon is not None else load_lexicon(language)
    if lexicon.language != language:
        raise ValueError(f"a {lexicon.language} lexicon cannot count {language} text")
    words = lexicon.matcher.words(text or "")
    matches = [Match(word=w, term=e.term, cls=e.cls, kind=e.kind)
               for word in words for w, e in lookup_word(word, lexicon)]
    by_class = dict.fromkeys(CLASSES, 0)
    by_class.update(Counter(m.cls for m in matches))
    return Counts(language=language, words=len(words), by_class=by_class,
                  by_term=dict(Counter(m.term for m in matches)), matches=tuple(matches))


def count_all(texts: Iterable[str], language: str, lexicon: Lexicon | None = None) -> Counts:
    """The counts of many texts together (e.g. every caption generated in one condition)."""
    lexicon = lexicon if lexicon is not None else load_lexicon(language)
    words, by_class, by_term, matches = 0, Counter(dict.fromkeys(CLASSES, 0)), Counter(), []
    for text in texts:
        counts = count_terms(text, language, lexicon)
        words += counts.words
        by_class.update(counts.by_class)
        by_term.update(counts.by_term)
        matches.extend(counts.matches)
    return Counts(language=language, words=words, by_class=dict(by_class), by_term=dict(by_term),
                  matches=tuple(matches))
