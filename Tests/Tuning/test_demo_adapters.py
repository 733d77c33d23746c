"""The demo adapters that `facet tune` trained (scripts/retrain-demo-adapters): the README
demo's six answers are right (both capitals, in English, French and German), and on the 20
held-out questions (examples/tune/heldout.jsonl) each adapter answers in its language more
often than not; the scores are printed next to the base model's."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FACET = os.environ.get("FACET_BIN", os.path.join(ROOT, ".build", "release", "facet"))
ENV = {**os.environ, "FACET_HOME": ROOT}
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from eval_heldout import language  # noqa: E402


def test_readme_demo_answers_are_right():
    q1, q2 = "What is the capital of France?", "What is the capital of Germany?"
    p = subprocess.run([FACET, "run", "--chat", "--max_output_len", "48", "--input_text", q1, q1, q1, q2, q2, q2,
                        "--lora_dir", "adapters/fr", "adapters/de", "--lora_task_uids", "-1", "0", "1", "-1", "0", "1"],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    outs = [t for _, t in sorted(re.findall(r'^Output \[Text (\d+) Beam 0\]: "(.*)"$', p.stdout, re.M), key=lambda x: int(x[0]))]
    expected = [("Paris", "en"), ("Paris", "fr"), ("Paris", "de"), ("Berlin", "en"), ("Berlin", "fr"), ("Berlin", "de")]
    assert len(outs) == len(expected), p.stdout
    for text, (city, lang) in zip(outs, expected):
        assert city in text and language(text) == lang, (text, city, lang)


def test_heldout_questions_in_the_adapters_languages(tmp_path):
    out = tmp_path / "heldout.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval_heldout.py"), "--json", str(out)],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr
    print(p.stdout.splitlines()[-3:])
    result = json.load(open(out))
    n, score = result["n"], result["score"]
    assert n == 20
    for m in ("fr", "de"):
        assert score[m]["language"] >= 14, (m, score[m])
