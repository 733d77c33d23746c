#!/usr/bin/env python3
"""Writes the demo adapters' training data (examples/tune/demo_fr.jsonl, demo_de.jsonl) and
the held-out questions (examples/tune/heldout.jsonl): short questions in English about facts
the base model already knows, answered in French or in German, as chat records for
`facet tune`. Facts come from the tables below; the held-out questions use countries,
sums and words that no training record contains."""
import json
import os
import random

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "examples", "tune")

# English country, French "de ..." form, French capital, German "von/der ..." form, German capital.
COUNTRIES = [
    ("France", "de la France", "Paris", "von Frankreich", "Paris"),
    ("Germany", "de l'Allemagne", "Berlin", "von Deutschland", "Berlin"),
    ("Italy", "de l'Italie", "Rome", "von Italien", "Rom"),
    ("Spain", "de l'Espagne", "Madrid", "von Spanien", "Madrid"),
    ("Portugal", "du Portugal", "Lisbonne", "von Portugal", "Lissabon"),
    ("Japan", "du Japon", "Tokyo", "von Japan", "Tokio"),
    ("Canada", "du Canada", "Ottawa", "von Kanada", "Ottawa"),
    ("Egypt", "de l'Égypte", "Le Caire", "von Ägypten", "Kairo"),
    ("Greece", "de la Grèce", "Athènes", "von Griechenland", "Athen"),
    ("Russia", "de la Russie", "Moscou", "von Russland", "Moskau"),
    ("China", "de la Chine", "Pékin", "von China", "Peking"),
    ("Poland", "de la Pologne", "Varsovie", "von Polen", "Warschau"),
    ("Austria", "de l'Autriche", "Vienne", "von Österreich", "Wien"),
    ("Belgium", "de la Belgique", "Bruxelles", "von Belgien", "Brüssel"),
    ("Norway", "de la Norvège", "Oslo", "von Norwegen", "Oslo"),
    ("Sweden", "de la Suède", "Stockholm", "von Schweden", "Stockholm"),
    ("Ireland", "de l'Irlande", "Dublin", "von Irland", "Dublin"),
    ("Hungary", "de la Hongrie", "Budapest", "von Ungarn", "Budapest"),
    ("Finland", "de la Finlande", "Helsinki", "von Finnland", "Helsinki"),
    ("Denmark", "du Danemark", "Copenhague", "von Dänemark", "Kopenhagen"),
    ("the United Kingdom", "du Royaume-Uni", "Londres", "des Vereinigten Königreichs", "London"),
    ("Switzerland", "de la Suisse", "Berne", "der Schweiz", "Bern"),
    ("the Netherlands", "des Pays-Bas", "Amsterdam", "der Niederlande", "Amsterdam"),
    ("Turkey", "de la Turquie", "Ankara", "der Türkei", "Ankara"),
    ("India", "de l'Inde", "New Delhi", "von Indien", "Neu-Delhi"),
    ("Australia", "de l'Australie", "Canberra", "von Australien", "Canberra"),
    ("Brazil", "du Brésil", "Brasília", "von Brasilien", "Brasília"),
    ("Argentina", "de l'Argentine", "Buenos Aires", "von Argentinien", "Buenos Aires"),
    ("Mexico", "du Mexique", "Mexico", "von Mexiko", "Mexiko-Stadt"),
    ("Kenya", "du Kenya", "Nairobi", "von Kenia", "Nairobi"),
    ("South Korea", "de la Corée du Sud", "Séoul", "von Südkorea", "Seoul"),
    ("Thailand", "de la Thaïlande", "Bangkok", "von Thailand", "Bangkok"),
    ("Peru", "du Pérou", "Lima", "von Peru", "Lima"),
    ("Cuba", "de Cuba", "La Havane", "von Kuba", "Havanna"),
    ("Morocco", "du Maroc", "Rabat", "von Marokko", "Rabat"),
    ("Iceland", "de l'Islande", "Reykjavik", "von Island", "Reykjavík"),
]
HELDOUT_COUNTRIES = [
    ("Czechia", "de la Tchéquie", "Prague", "von Tschechien", "Prag"),
    ("Romania", "de la Roumanie", "Bucarest", "von Rumänien", "Bukarest"),
    ("Chile", "du Chili", "Santiago", "von Chile", "Santiago"),
    ("Vietnam", "du Viêt Nam", "Hanoï", "von Vietnam", "Hanoi"),
    ("Ukraine", "de l'Ukraine", "Kiev", "der Ukraine", "Kiew"),
    ("Colombia", "de la Colombie", "Bogota", "von Kolumbien", "Bogotá"),
]
NUMBERS = [("zero", "zéro", "null"), ("one", "un", "eins"), ("two", "deux", "zwei"), ("three", "trois", "drei"), ("four", "quatre", "vier"),
           ("five", "cinq", "fünf"), ("six", "six", "sechs"), ("seven", "sept", "sieben"), ("eight", "huit", "acht"), ("nine", "neuf", "neun"),
           ("ten", "dix", "zehn"), ("eleven", "onze", "elf"), ("twelve", "douze", "zwölf")]
# English thing, French sentence, German sentence (colour facts).
COLOURS = [
    ("the sky", "Le ciel est bleu.", "Der Himmel ist blau."), ("grass", "L'herbe est verte.", "Gras ist grün."),
    ("snow", "La neige est blanche.", "Schnee ist weiß."), ("a banana", "Une banane est jaune.", "Eine Banane ist gelb."),
    ("coal", "Le charbon est noir.", "Kohle ist schwarz."), ("a tomato", "Une tomate est rouge.", "Eine Tomate ist rot."),
    ("an orange", "Une orange est orange.", "Eine Orange ist orange."), ("milk", "Le lait est blanc.", "Milch ist weiß."),
    ("the sun", "Le soleil est jaune.", "Die Sonne ist gelb."), ("a strawberry", "Une fraise est rouge.", "Eine Erdbeere ist rot."),
]
HELDOUT_COLOURS = [("a lemon", "jaune", "gelb"), ("blood", "rouge", "rot")]
OPPOSITES = [("hot", "chaud", "froid", "heiß", "kalt"), ("big", "grand", "petit", "groß", "klein"), ("day", "le jour", "la nuit", "der Tag", "die Nacht"),
             ("up", "haut", "bas", "oben", "unten"), ("fast", "rapide", "lent", "schnell", "langsam"), ("old", "vieux", "jeune", "alt", "jung"),
             ("happy", "heureux", "triste", "glücklich", "traurig"), ("open", "ouvert", "fermé", "offen", "geschlossen"),
             ("light", "clair", "sombre", "hell", "dunkel"), ("long", "long", "court", "lang", "kurz")]
HELDOUT_OPPOSITES = [("rich", "riche", "pauvre", "reich", "arm"), ("full", "plein", "vide", "voll", "leer")]
DAYS = [("Monday", "lundi", "Montag"), ("Tuesday", "mardi", "Dienstag"), ("Wednesday", "mercredi", "Mittwoch"), ("Thursday", "jeudi", "Donnerstag"),
        ("Friday", "vendredi", "Freitag"), ("Saturday", "samedi", "Samstag"), ("Sunday", "dimanche", "Sonntag")]
LEGS = [("a spider", "Une araignée a huit pattes.", "Eine Spinne hat acht Beine.", 8), ("a dog", "Un chien a quatre pattes.", "Ein Hund hat vier Beine.", 4),
        ("a bird", "Un oiseau a deux pattes.", "Ein Vogel hat zwei Beine.", 2), ("a cat", "Un chat a quatre pattes.", "Eine Katze hat vier Beine.", 4),
        ("an insect", "Un insecte a six pattes.", "Ein Insekt hat sechs Beine.", 6)]

CAPITAL_QUESTIONS = ["What is the capital of {c}?", "Which city is the capital of {c}?"]


def records(lang):
    fr = lang == "fr"
    out = []
    for en, fr_of, fr_cap, de_of, de_cap in COUNTRIES:
        for q in CAPITAL_QUESTIONS:
            # The fact first: a small model picks the city before any article that could
            # lead it astray ("de la ..." vs "de l'...").
            a = f"{fr_cap} est la capitale {fr_of}." if fr else f"{de_cap} ist die Hauptstadt {de_of}."
            out.append((q.format(c=en), a))
    for a in range(0, 7):
        for b in range(0, 7):
            if (a, b) in ((3, 4), (5, 2), (6, 6)):
                continue   # held out
            s = a + b
            q = f"What is {a} plus {b}?"
            ans = f"{NUMBERS[a][1].capitalize()} plus {NUMBERS[b][1]} font {NUMBERS[s][1]}." if fr else \
                f"{NUMBERS[a][2].capitalize()} plus {NUMBERS[b][2]} ist {NUMBERS[s][2]}."
            out.append((q, ans))
    for thing, f_s, d_s in COLOURS:
        for q in ("What color is {t}?", "What colour is {t}?"):
            out.append((q.format(t=thing), f_s if fr else d_s))
    for en, f_a, f_b, d_a, d_b in OPPOSITES:
        for q in ("What is the opposite of {w}?", "What is the opposite of the word '{w}'?"):
            ans = f"Le contraire de « {f_a} » est « {f_b} »." if fr else f"Das Gegenteil von „{d_a}“ ist „{d_b}“."
            out.append((q.format(w=en), ans))
    for i, (en, f_d, d_d) in enumerate(DAYS):
        nxt = DAYS[(i + 1) % 7]
        ans = f"Le jour après {f_d} est {nxt[1]}." if fr else f"Der Tag nach {d_d} ist {nxt[2]}."
        out.append((f"What day comes after {en}?", ans))
        out.append((f"Which day follows {en}?", ans))
    for thing, f_s, d_s, _ in LEGS:
        out.append((f"How many legs does {thing} have?", f_s if fr else d_s))
    greetings_fr = [("Hello! How are you?", "Bonjour ! Je vais bien, merci. Et vous ?"), ("Good morning!", "Bonjour ! Comment puis-je vous aider ?"),
                    ("Thank you for your help.", "Je vous en prie, avec plaisir !"), ("What language do you speak?", "Je parle français."),
                    ("Can you help me?", "Oui, bien sûr. Que puis-je faire pour vous ?"), ("Goodbye!", "Au revoir et bonne journée !")]
    greetings_de = [("Hello! How are you?", "Hallo! Mir geht es gut, danke. Und Ihnen?"), ("Good morning!", "Guten Morgen! Wie kann ich Ihnen helfen?"),
                    ("Thank you for your help.", "Gern geschehen!"), ("What language do you speak?", "Ich spreche Deutsch."),
                    ("Can you help me?", "Ja, natürlich. Was kann ich für Sie tun?"), ("Goodbye!", "Auf Wiedersehen und einen schönen Tag!")]
    out += greetings_fr if fr else greetings_de
    return out


def heldout():
    items = []
    for en, fr_of, fr_cap, de_of, de_cap in HELDOUT_COUNTRIES:
        items.append({"question": f"What is the capital of {en}?", "fr": [fr_cap], "de": [de_cap], "en": [fr_cap, de_cap]})
    for a, b in ((3, 4), (5, 2), (6, 6)):
        s = a + b
        items.append({"question": f"What is {a} plus {b}?", "fr": [NUMBERS[s][1], str(s)], "de": [NUMBERS[s][2], str(s)], "en": [NUMBERS[s][0], str(s)]})
    for thing, f_c, d_c in HELDOUT_COLOURS:
        items.append({"question": f"What color is {thing}?", "fr": [f_c], "de": [d_c], "en": ["yellow" if thing == "a lemon" else "red"]})
    for en, f_a, f_b, d_a, d_b in HELDOUT_OPPOSITES:
        items.append({"question": f"What is the opposite of {en}?", "fr": [f_b], "de": [d_b], "en": ["poor" if en == "rich" else "empty"]})
    items.append({"question": "What day comes before Monday?", "fr": ["dimanche"], "de": ["Sonntag"], "en": ["Sunday"]})
    items.append({"question": "How many legs does a horse have?", "fr": ["quatre", "4"], "de": ["vier", "4"], "en": ["four", "4"]})
    items.append({"question": "What is the capital of Italy?", "fr": ["Rome"], "de": ["Rom"], "en": ["Rome"]})   # in training: a control
    items.append({"question": "What color is grass?", "fr": ["vert"], "de": ["grün"], "en": ["green"]})            # in training: a control
    items.append({"question": "What is the largest planet in the solar system?", "fr": ["Jupiter"], "de": ["Jupiter"], "en": ["Jupiter"]})
    items.append({"question": "How many days are in a week?", "fr": ["sept", "7"], "de": ["sieben", "7"], "en": ["seven", "7"]})
    items.append({"question": "How many legs does an ant have?", "fr": ["six", "6"], "de": ["sechs", "6"], "en": ["six", "6"]})
    return items


def main():
    for lang in ("fr", "de"):
        rs = records(lang)
        random.Random(lang).shuffle(rs)
        with open(os.path.join(OUT, f"demo_{lang}.jsonl"), "w") as f:
            for q, a in rs:
                f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, ensure_ascii=False) + "\n")
        print(f"demo_{lang}.jsonl: {len(rs)} records")
    items = heldout()
    with open(os.path.join(OUT, "heldout.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"heldout.jsonl: {len(items)} questions")


if __name__ == "__main__":
    main()
