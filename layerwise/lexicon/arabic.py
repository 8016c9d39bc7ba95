"""Arabic words, their normalisation and their look-up with clitics.

Normalisation (captions and lexicon terms alike):
* diacritics removed: harakat and tanween U+064B-U+0652, superscript alef U+0670; tatweel U+0640 and
  zero-width (non-)joiners removed;
* hamza and alef forms أ إ آ ٱ -> ا; alef maqsura ى -> ي (and the Persian-keyboard ی ک -> ي ك);
* taa marbuta ة is kept in the normal form (`key`), because the spelling ة/ه separates words ("ابنة" a
  daughter, "ابنه" his son); the loose form (`loose_key`) also reads ة as ه, for text that writes "امراه".

A word is a run of letters or digits after normalisation (Arabic punctuation ، ؛ ؟ separates words).

Look-up of one word, first match wins, so letters that belong to a lexicon word are never stripped:
1. the word itself ("ولد" is a boy, not و + "لد"; "بنت" is a girl, not ب + "نت"; "والد" a father);
2. the word split into proclitics + stem + enclitic, fewest stripped letters first, the stem looked up
   in the normal form (a stem ending in ت before an enclitic is also read with ة: "زوجته" -> زوجة):
   proclitics: conjunction و ف, then preposition ب ك ل, then the article ال (ل + ال is written لل);
   enclitics: possessive/object pronouns ه ها هم هما هن ك كم كما كن ي نا, and the accusative
   tanween alef ا ("رجلا");
3. as 1 and 2 with the loose form and proclitics only ("المراه" -> المرأة).
Grammar limits what is stripped: a word has no enclitic after the article; pronouns (هو هي) take only
و or ف; two-letter stems (أب أم أخ) take only و or ف or the article, and no tanween alef, so that "باب"
(a door), "لام" and "أما" are not a father or a mother. "رجل" takes no pronoun enclitic: "رجله" is "his
leg" (رِجْله), while "رجلا" is "a man" (accusative).
"""
from __future__ import annotations

import re
import unicodedata

_REMOVE = {cp: None for cp in [*range(0x064B, 0x0653), 0x0670, 0x0640, 0x200C, 0x200D, 0x200E, 0x200F]}
_LETTERS = {"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ی": "ي", "ک": "ك"}
_TABLE = str.maketrans({**_REMOVE, **_LETTERS})
_WORD = re.compile(r"[^\W_]+")

CONJUNCTIONS = ("", "و", "ف")
PREPOSITIONS = ("", "ب", "ك", "ل")
ARTICLE = "ال"
ENCLITICS = ("ه", "ها", "هم", "هما", "هن", "ك", "كم", "كما", "كن", "ي", "نا")
TANWEEN_ALEF = "ا"
# Stems that take no enclitic: the same letters with a pronoun are another word.
NO_ENCLITIC = frozenset({"رجل"})   # رِجْل (leg): "رجله" his leg, "رجلي" my leg


def _proclitics() -> list[tuple[str, bool]]:
    """(proclitic string, has the article), e.g. ("وال", True), ("لل", True), ("ب", False)."""
    out = []
    for conj in CONJUNCTIONS:
        for prep in PREPOSITIONS:
            out.append((conj + prep, False))
            out.append((conj + ("لل" if prep == "ل" else prep + ARTICLE), True))
    return out


PROCLITICS = _proclitics()


def normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text).translate(_TABLE)


def loosen(word: str) -> str:
    return word.replace("ة", "ه")


def words(text: str) -> list[str]:
    """The normalised words of `text`, in order."""
    return _WORD.findall(normalise(text))


def key(term: str) -> str:
    return normalise(term.strip())


def loose_key(term: str) -> str:
    return loosen(key(term))


def term_problem(term: str) -> str | None:
    found = words(term)
    if found != [key(term)]:
        return f"is not one word as the matcher reads words (it reads {found})"
    if not re.fullmatch(r"[\u0621-\u064A]+", found[0]):
        return "has characters that are not Arabic letters after normalisation"
    return None


def _allowed(entry, stem: str, proclitic: str, with_article: bool, enclitic: str) -> bool:
    if entry.kind == "pronoun":
        return proclitic in ("و", "ف") and not enclitic
    if enclitic and with_article:
        return False
    if enclitic in ENCLITICS and stem in NO_ENCLITIC:
        return False
    if len(stem) < 3:
        return (proclitic in ("", "و", "ف") or with_article) and enclitic != TANWEEN_ALEF
    return True


def _splits(word: str, enclitics: tuple[str, ...]):
    """(proclitic, has article, stem, enclitic) splits of `word`, fewest stripped letters first (the whole word excluded)."""
    found = []
    for proclitic, with_article in PROCLITICS:
        if not word.startswith(proclitic):
            continue
        for enclitic in ("",) + enclitics:
            if (proclitic or enclitic) and word.endswith(enclitic):
                stem = word[len(proclitic): len(word) - len(enclitic)]
                if len(stem) >= 2:
                    found.append((len(proclitic) + len(enclitic), len(enclitic), proclitic, with_article, stem, enclitic))
    found.sort(key=lambda s: s[:2])
    return [s[2:] for s in found]


def lookup(word: str, keys: dict, loose_keys: dict) -> list[tuple[str, object]]:
    """[(word, entry)] for the lexicon word in `word` (normalised), or []."""
    entry = keys.get(word)
    if entry is not None:
        return [(word, entry)]
    for proclitic, with_article, stem, enclitic in _splits(word, ENCLITICS + (TANWEEN_ALEF,)):
        candidates = [stem]
        if enclitic in ENCLITICS and stem.endswith("ت"):
            candidates.append(stem[:-1] + "ة")   # taa marbuta is written ت before an enclitic
        for candidate in candidates:
            entry = keys.get(candidate)
            if entry is not None and _allowed(entry, candidate, proclitic, with_article, enclitic):
                return [(word, entry)]
    loose = loosen(word)
    entry = loose_keys.get(loose)
    if entry is not None:
        return [(word, entry)]
    for proclitic, with_article, stem, _ in _splits(loose, ()):
        entry = loose_keys.get(stem)
        if entry is not None and _allowed(entry, stem, proclitic, with_article, ""):
            return [(word, entry)]
    return []
