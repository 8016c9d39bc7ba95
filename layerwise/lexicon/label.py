"""A gender label for one caption pair (one caption per language) from the lexicon's terms.

One caption's label, from its male and female term counts (neutral terms never decide):
  male       male terms and no female term ("a man and his dog");
  female     female terms and no male term;
  ambiguous  both ("a man and a woman", "a woman and her son");
  none       neither ("a person rides a bike", "a dog runs").

The pair's label follows a policy (`--label-from` of `layerwise label`):
  both      (default) every caption must give the same label. male/female in one language and the other
            class (or ambiguous) in another is `ambiguous`; male/female in one language and no gendered
            term in another is `none` (the captions disagree: the evidence says so, and the label report
            lists these disagreements);
  either    the captions that have gendered terms must agree; captions without any are ignored;
  <language> only that language's caption decides (the others are still counted, for the report).
Only male and female are labels a samplesheet can learn from; ambiguous and none rows are left out (or
written as gender `unknown`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from layerwise.core.errors import LayerwiseError
from layerwise.lexicon.match import Counts, count_terms
from layerwise.lexicon.terms import LANGUAGES, Lexicon

LABELS = ("male", "female", "ambiguous", "none")
GENDERED = ("male", "female")
POLICIES = ("both", "either") + LANGUAGES


@dataclass(frozen=True)
class LabelEvidence:
    policy: str
    counts: dict[str, Counts]     # language -> the caption's counts
    labels: dict[str, str]        # language -> the caption's own label (one of LABELS)
    source: tuple[str, ...]       # the languages whose captions gave a male/female label (empty otherwise)
    reason: str                   # one line: why this label

    @property
    def agree(self) -> bool:
        """Do the captions of every language give the same label?"""
        return len(set(self.labels.values())) <= 1


def caption_label(counts: Counts) -> str:
    """male, female, ambiguous (both classes) or none (neither), from one caption's counts."""
    if counts.male and counts.female:
        return "ambiguous"
    if counts.male:
        return "male"
    if counts.female:
        return "female"
    return "none"


def check_policy(policy: str, languages) -> str:
    if policy not in ("both", "either") and policy not in languages:
        raise LayerwiseError(f"label policy {policy!r}: use both, either or one of the captions' languages "
                             f"({', '.join(languages) or 'none given'})")
    return policy


def _describe(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{lang} {label}" for lang, label in labels.items())


def combine(labels: Mapping[str, str], policy: str = "both") -> tuple[str, tuple[str, ...], str]:
    """(label, source languages, reason) of a caption pair from each caption's label, under `policy`."""
    check_policy(policy, list(labels))
    if policy not in ("both", "either"):
        label = labels[policy]
        source = (policy,) if label in GENDERED else ()
        return label, source, f"{policy} caption: {label} (--label-from {policy})"
    # both: every caption counts; either: only the captions that have a gendered term
    considered = {lang: lab for lang, lab in labels.items() if policy == "both" or lab != "none"}
    present = set(considered.values())
    if not considered:
        return "none", (), f"no gendered term in any caption ({_describe(labels)})"
    if "ambiguous" in present or set(GENDERED) <= present:
        return "ambiguous", (), f"both classes present ({_describe(labels)})"
    if present == {"none"}:
        return "none", (), f"no gendered term in any caption ({_describe(labels)})"
    if len(present) == 1:
        label = present.pop()
        return label, tuple(considered), _describe(considered)
    # policy both, some captions gendered and others without a gendered term
    return "none", (), f"the captions disagree ({_describe(labels)}): --label-from both needs every language"


def label_caption(captions_by_language: Mapping[str, str], policy: str = "both",
                  lexicons: Mapping[str, Lexicon] | None = None) -> tuple[str, LabelEvidence]:
    """(label, evidence) for one caption pair, e.g. {"english": "A man ...", "arabic": "رجل ..."}.

    label is one of LABELS (module docstring: the rule and the policies). Raises LayerwiseError for a
    language without a lexicon or a policy naming a language that has no caption here.
    """
    if not captions_by_language:
        raise LayerwiseError("label_caption needs at least one caption")
    check_policy(policy, list(captions_by_language))
    lexicons = lexicons or {}
    counts = {lang: count_terms(text, lang, lexicons.get(lang)) for lang, text in captions_by_language.items()}
    labels = {lang: caption_label(c) for lang, c in counts.items()}
    label, source, reason = combine(labels, policy)
    return label, LabelEvidence(policy=policy, counts=counts, labels=labels, source=source, reason=reason)
