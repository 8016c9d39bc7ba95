"""The English/Arabic gender lexicon (assets/lexicon/) and its word matcher: torch-free, standard library only.

    from layerwise.lexicon import count_terms, load_lexicon, label_caption
    count_terms("The man and his son", "english").by_class   # {'male': 3, 'female': 0, 'neutral': 0}
    label_caption({"english": "A girl runs", "arabic": "فتاة تجري"})[0]   # 'female'

`count_terms` reads whole words (never substrings), normalises Arabic spelling and strips Arabic clitics
(layerwise/lexicon/english.py, arabic.py); `label_caption` derives a caption pair's label (label.py);
`layerwise label` turns a caption corpus into a samplesheet with them (layerwise/commands/label.py).
"""
from layerwise.lexicon.label import LABELS, POLICIES, LabelEvidence, caption_label, label_caption
from layerwise.lexicon.match import Counts, Match, count_all, count_terms
from layerwise.lexicon.terms import CLASSES, LANGUAGES, Entry, Lexicon, lexicon_dir, load_lexicon

__all__ = ["CLASSES", "LABELS", "LANGUAGES", "POLICIES", "Counts", "Entry", "LabelEvidence", "Lexicon", "Match",
           "caption_label", "count_all", "count_terms", "label_caption", "lexicon_dir", "load_lexicon"]
