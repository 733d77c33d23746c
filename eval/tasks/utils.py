"""Scoring of the generation tasks: the answer names the right city (or an alias), and it
is written in the question's language (more of that language's common words than
English's)."""
import re

WORDS = {
    "fr": {"est", "la", "le", "les", "de", "du", "des", "capitale", "et", "une", "un"},
    "de": {"ist", "die", "der", "das", "den", "hauptstadt", "von", "und", "ein", "eine"},
    "en": {"is", "the", "of", "capital", "and", "a", "an", "city"},
}


def _score(doc, text, language):
    words = re.findall(r"\w+", text.lower())
    own = sum(w in WORDS[language] for w in words)
    english = sum(w in WORDS["en"] for w in words)
    return {"correct": int(any(a.lower() in text.lower() for a in doc["aliases"])),
            "in_language": int(own > english)}


def process_fr(doc, results):
    return _score(doc, results[0], "fr")


def process_de(doc, results):
    return _score(doc, results[0], "de")
