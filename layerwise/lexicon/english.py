"""English words and their lexicon look-up.

A word is a run of letters or digits, possibly joined by inner apostrophes or hyphens ("man's",
"mother-in-law", "x-ray"), with an optional closing apostrophe ("girls'"). Text is NFKC-normalised and
case-folded; curly apostrophes (’ ‘ ʼ) count as "'" and the Unicode hyphens U+2010/U+2011 as "-".
Only whole words are looked up, so "he" is never found in "the", nor "man" in "woman", "human" or "many".

Look-up of one word, first match wins:
1. the word itself ("man's" when the lexicon lists it, "mother-in-law");
2. without a possessive or contraction ending ('s ' 'd 'll 're 've 'm): "father's" -> father, "he's" -> he;
3. a hyphenated word: joined ("police-man" -> policeman), else each of its parts ("step-mother"
   -> mother when 'stepmother' is not listed; "x-ray" matches nothing). A part-wise match can be wrong
   ("man-made" counts man): list such words as terms to decide them.
"""
from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "\u00b4": "'",
                              "\u2010": "-", "\u2011": "-"})
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*'?")
_ENDINGS = ("'s", "'", "'d", "'ll", "'re", "'ve", "'m")


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()


def words(text: str) -> list[str]:
    """The normalised words of `text`, in order."""
    return _WORD.findall(normalise(text))


def key(term: str) -> str:
    return normalise(term.strip())


loose_key = key   # English has one normal form


def term_problem(term: str) -> str | None:
    """Why a lexicon term can never be matched (None: it can)."""
    found = words(term)
    if found != [key(term)]:
        return f"is not one English word as the matcher reads words (it reads {found})"
    return None


def lookup(word: str, keys: dict, loose_keys: dict) -> list[tuple[str, object]]:
    """(word, entry) pairs matched by one normalised word (several only for a hyphenated word's parts)."""
    entry = _whole(word, keys)
    if entry is not None:
        return [(word, entry)]
    if "-" not in word:
        return []
    joined = _whole(word.replace("-", ""), keys)
    if joined is not None:
        return [(word, joined)]
    found = []
    for part in word.split("-"):
        entry = _whole(part, keys)
        if entry is not None:
            found.append((part, entry))
    return found


def _whole(word: str, keys: dict):
    entry = keys.get(word)
    if entry is not None:
        return entry
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) > len(ending):
            entry = keys.get(word[: -len(ending)])
            if entry is not None:
                return entry
    return None
