"""Gendered words in the generated captions, with the gender lexicon (layerwise.lexicon): whole words, never
substrings ("he" is not in "the", "male" not in "female"), Arabic clitics stripped.

    captions, terms = count_captions(captions)      # captions.parquet and terms.parquet rows
"""
from __future__ import annotations

from collections import Counter

import pandas as pd

from layerwise.intervention import outputs
from layerwise.lexicon import count_terms, load_lexicon


def count_captions(captions_df: pd.DataFrame, language_column: str = "caption_language"
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(captions with `male`, `female`, `neutral` and `words` filled, terms).

    Each caption is counted with the lexicon of its row's `language_column` (english or arabic; another raises
    LayerwiseError). A missing caption counts as empty text. The terms table has one row per (layers,
    feature_language, caption_language, condition, run, term) with the term's class and its occurrences summed
    over that run's captions; terms that do not occur have no row. Both come back as `outputs.frame` tables.
    """
    df = captions_df.copy().reset_index(drop=True)
    male, female, neutral, words = [], [], [], []
    terms: Counter = Counter()
    key_columns = outputs.RUN
    for c in key_columns:
        if c not in df.columns:
            df[c] = pd.NA
    lexicons = {}
    keys = df[key_columns].astype(object).where(df[key_columns].notna(), None).itertuples(index=False, name=None)
    for key, text, language in zip(keys, df["caption"], df[language_column]):
        language = str(language)
        if language not in lexicons:
            lexicons[language] = load_lexicon(language)
        counts = count_terms("" if text is None or pd.isna(text) else str(text), language, lexicons[language])
        male.append(counts.male)
        female.append(counts.female)
        neutral.append(counts.neutral)
        words.append(counts.words)
        for m in counts.matches:
            terms[(*key, m.term, m.cls)] += 1
    df["male"], df["female"], df["neutral"], df["words"] = male, female, neutral, words
    rows = [dict(zip([*key_columns, "term", "class"], k), count=n) for k, n in terms.items()]
    terms_df = outputs.frame(rows, outputs.TERMS)
    terms_df = terms_df.sort_values([*key_columns, "term"], kind="stable").reset_index(drop=True)
    return outputs.frame(df, outputs.CAPTIONS), terms_df
