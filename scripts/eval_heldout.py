#!/usr/bin/env python3
"""The demo adapters on questions no training record holds (examples/tune/heldout.jsonl):
each question to the base model and to adapters/fr and adapters/de in one `facet run`
batch (greedy, chat template), then per model the share of answers in the expected
language and the share that are right (the expected word, in any case, appears).

    python3 scripts/eval_heldout.py [--fr DIR] [--de DIR] [--readme]
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FACET = os.path.join(ROOT, ".build", "release", "facet")

MARKERS = {
    "en": [" is ", "the ", " of ", " are ", " and ", " has "],
    "fr": [" est ", "la ", "le ", " de ", " font", " a ", "les ", "é", "è", "à", "ç", "«", " du "],
    "de": [" ist ", "die ", "der ", "das ", " von ", " hat ", " und ", "ä", "ö", "ü", "ß", "„"],
}


def language(text):
    t = " " + text.lower() + " "
    scores = {lang: sum(t.count(m) for m in marks) for lang, marks in MARKERS.items()}
    return max(scores, key=scores.get)


def run(questions, fr, de):
    inputs = [q for q in questions for _ in range(3)]
    uids = ["-1", "0", "1"] * len(questions)
    p = subprocess.run([FACET, "run", "--chat", "--max_output_len", "40", "--input_text", *inputs,
                        "--lora_dir", fr, de, "--lora_task_uids", *uids], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(p.stderr)
    # An answer may span lines: it runs to the closing quote before the next Input line.
    outs = re.findall(r'^Output \[Text (\d+) Beam 0\]: "(.*?)"\n(?=Input \[Text|\s*\Z)', p.stdout + "\n", re.M | re.S)
    return [text for _, text in sorted(outs, key=lambda x: int(x[0]))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fr", default=os.path.join(ROOT, "adapters", "fr"))
    ap.add_argument("--de", default=os.path.join(ROOT, "adapters", "de"))
    ap.add_argument("--readme", action="store_true", help="print a Markdown table")
    ap.add_argument("--json", help="write the answers and scores here")
    a = ap.parse_args()
    items = [json.loads(line) for line in open(os.path.join(ROOT, "examples", "tune", "heldout.jsonl"))]
    answers = run([it["question"] for it in items], a.fr, a.de)
    models = [("base", "en"), ("fr", "fr"), ("de", "de")]
    score = {m: {"language": 0, "right": 0} for m, _ in models}
    rows = []
    for i, it in enumerate(items):
        row = {"question": it["question"]}
        for k, (m, lang) in enumerate(models):
            text = answers[3 * i + k]
            in_lang = language(text) == lang
            right = any(w.lower() in text.lower() for w in it[lang])
            score[m]["language"] += in_lang
            score[m]["right"] += right
            row[m] = {"answer": text, "language": in_lang, "right": right}
        rows.append(row)
    n = len(items)
    if a.readme:
        print("| model | answers in its language | right answers |")
        print("|---|---|---|")
        for m, lang in models:
            print(f"| {m} ({lang}) | {score[m]['language']}/{n} | {score[m]['right']}/{n} |")
    else:
        for row in rows:
            print(row["question"])
            for m, _ in models:
                r = row[m]
                print(f"  {m:4} {'L' if r['language'] else '-'}{'R' if r['right'] else '-'} {r['answer']}")
        for m, lang in models:
            print(f"{m}: in {lang} {score[m]['language']}/{n} ({100 * score[m]['language'] / n:.0f}%), right {score[m]['right']}/{n} ({100 * score[m]['right'] / n:.0f}%)")
    if a.json:
        json.dump({"rows": rows, "score": score, "n": n}, open(a.json, "w"), indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
