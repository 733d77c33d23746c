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
MORE_COUNTRIES = [
    ("Indonesia", "de l'Indonésie", "Jakarta", "von Indonesien", "Jakarta"), ("the Philippines", "des Philippines", "Manille", "der Philippinen", "Manila"),
    ("Pakistan", "du Pakistan", "Islamabad", "von Pakistan", "Islamabad"), ("Iran", "de l'Iran", "Téhéran", "des Iran", "Teheran"),
    ("Iraq", "de l'Irak", "Bagdad", "des Irak", "Bagdad"), ("Saudi Arabia", "de l'Arabie saoudite", "Riyad", "von Saudi-Arabien", "Riad"),
    ("Venezuela", "du Venezuela", "Caracas", "von Venezuela", "Caracas"), ("Serbia", "de la Serbie", "Belgrade", "von Serbien", "Belgrad"),
    ("Croatia", "de la Croatie", "Zagreb", "von Kroatien", "Zagreb"), ("Bulgaria", "de la Bulgarie", "Sofia", "von Bulgarien", "Sofia"),
    ("Luxembourg", "du Luxembourg", "Luxembourg", "von Luxemburg", "Luxemburg"), ("Lebanon", "du Liban", "Beyrouth", "des Libanon", "Beirut"),
    ("Syria", "de la Syrie", "Damas", "von Syrien", "Damaskus"), ("Tunisia", "de la Tunisie", "Tunis", "von Tunesien", "Tunis"),
    ("Algeria", "de l'Algérie", "Alger", "von Algerien", "Algier"), ("Ethiopia", "de l'Éthiopie", "Addis-Abeba", "von Äthiopien", "Addis Abeba"),
    ("New Zealand", "de la Nouvelle-Zélande", "Wellington", "von Neuseeland", "Wellington"), ("Afghanistan", "de l'Afghanistan", "Kaboul", "von Afghanistan", "Kabul"),
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


MONTHS = [("January", "janvier", "Januar"), ("February", "février", "Februar"), ("March", "mars", "März"), ("April", "avril", "April"),
          ("May", "mai", "Mai"), ("June", "juin", "Juni"), ("July", "juillet", "Juli"), ("August", "août", "August"),
          ("September", "septembre", "September"), ("October", "octobre", "Oktober"), ("November", "novembre", "November"),
          ("December", "décembre", "Dezember")]
MORE_COLOURS = [
    ("a cucumber", "Un concombre est vert.", "Eine Gurke ist grün."), ("a carrot", "Une carotte est orange.", "Eine Karotte ist orange."),
    ("chocolate", "Le chocolat est marron.", "Schokolade ist braun."), ("the sea", "La mer est bleue.", "Das Meer ist blau."),
    ("a leaf", "Une feuille est verte.", "Ein Blatt ist grün."), ("a cherry", "Une cerise est rouge.", "Eine Kirsche ist rot."),
    ("a crow", "Un corbeau est noir.", "Eine Krähe ist schwarz."), ("a polar bear", "Un ours polaire est blanc.", "Ein Eisbär ist weiß."),
    ("gold", "L'or est jaune.", "Gold ist gelb."), ("a fire truck", "Un camion de pompiers est rouge.", "Ein Feuerwehrauto ist rot."),
    ("a frog", "Une grenouille est verte.", "Ein Frosch ist grün."), ("salt", "Le sel est blanc.", "Salz ist weiß."),
]
MORE_OPPOSITES = [("good", "bon", "mauvais", "gut", "schlecht"), ("left", "gauche", "droite", "links", "rechts"),
                  ("yes", "oui", "non", "ja", "nein"), ("in", "dedans", "dehors", "drinnen", "draußen"),
                  ("early", "tôt", "tard", "früh", "spät"), ("easy", "facile", "difficile", "leicht", "schwer"),
                  ("strong", "fort", "faible", "stark", "schwach"), ("wet", "mouillé", "sec", "nass", "trocken"),
                  ("high", "haut", "bas", "hoch", "niedrig"), ("new", "neuf", "vieux", "neu", "alt"),
                  ("clean", "propre", "sale", "sauber", "schmutzig"), ("summer", "l'été", "l'hiver", "der Sommer", "der Winter"),
                  ("north", "le nord", "le sud", "der Norden", "der Süden"), ("east", "l'est", "l'ouest", "der Osten", "der Westen"),
                  ("love", "l'amour", "la haine", "die Liebe", "der Hass"), ("war", "la guerre", "la paix", "der Krieg", "der Frieden")]
LEGS_EXTRA = [("a cow", "Une vache a quatre pattes.", "Eine Kuh hat vier Beine."), ("a chicken", "Une poule a deux pattes.", "Ein Huhn hat zwei Beine."),
              ("a duck", "Un canard a deux pattes.", "Eine Ente hat zwei Beine."), ("a bee", "Une abeille a six pattes.", "Eine Biene hat sechs Beine."),
              ("a lion", "Un lion a quatre pattes.", "Ein Löwe hat vier Beine."), ("an elephant", "Un éléphant a quatre pattes.", "Ein Elefant hat vier Beine."),
              ("a mouse", "Une souris a quatre pattes.", "Eine Maus hat vier Beine."), ("a snake", "Un serpent n'a pas de pattes.", "Eine Schlange hat keine Beine.")]
# English word, French word, German word (the article where a noun needs one to be right).
WORDS = [("cat", "chat", "Katze"), ("dog", "chien", "Hund"), ("house", "maison", "Haus"), ("water", "eau", "Wasser"), ("bread", "pain", "Brot"),
         ("book", "livre", "Buch"), ("tree", "arbre", "Baum"), ("car", "voiture", "Auto"), ("sun", "soleil", "Sonne"), ("moon", "lune", "Mond"),
         ("star", "étoile", "Stern"), ("apple", "pomme", "Apfel"), ("milk", "lait", "Milch"), ("cheese", "fromage", "Käse"), ("friend", "ami", "Freund"),
         ("school", "école", "Schule"), ("city", "ville", "Stadt"), ("river", "rivière", "Fluss"), ("sea", "mer", "Meer"), ("mountain", "montagne", "Berg"),
         ("flower", "fleur", "Blume"), ("bird", "oiseau", "Vogel"), ("fish", "poisson", "Fisch"), ("horse", "cheval", "Pferd"), ("cow", "vache", "Kuh"),
         ("mouse", "souris", "Maus"), ("door", "porte", "Tür"), ("window", "fenêtre", "Fenster"), ("table", "table", "Tisch"), ("chair", "chaise", "Stuhl"),
         ("bed", "lit", "Bett"), ("hand", "main", "Hand"), ("head", "tête", "Kopf"), ("eye", "œil", "Auge"), ("heart", "cœur", "Herz"),
         ("day", "jour", "Tag"), ("night", "nuit", "Nacht"), ("morning", "matin", "Morgen"), ("evening", "soir", "Abend"), ("week", "semaine", "Woche"),
         ("year", "année", "Jahr"), ("money", "argent", "Geld"), ("work", "travail", "Arbeit"), ("coffee", "café", "Kaffee"), ("tea", "thé", "Tee"),
         ("wine", "vin", "Wein"), ("beer", "bière", "Bier"), ("egg", "œuf", "Ei"), ("rain", "pluie", "Regen"), ("snow", "neige", "Schnee"),
         ("wind", "vent", "Wind"), ("fire", "feu", "Feuer"), ("sky", "ciel", "Himmel"), ("love", "amour", "Liebe"), ("family", "famille", "Familie"),
         ("mother", "mère", "Mutter"), ("father", "père", "Vater"), ("brother", "frère", "Bruder"), ("sister", "sœur", "Schwester"), ("child", "enfant", "Kind"),
         ("woman", "femme", "Frau"), ("man", "homme", "Mann"), ("king", "roi", "König"), ("queen", "reine", "Königin"), ("train", "train", "Zug"),
         ("boat", "bateau", "Boot"), ("plane", "avion", "Flugzeug"), ("street", "rue", "Straße"), ("garden", "jardin", "Garten"), ("kitchen", "cuisine", "Küche"),
         ("key", "clé", "Schlüssel"), ("letter", "lettre", "Brief"), ("language", "langue", "Sprache"), ("music", "musique", "Musik"), ("song", "chanson", "Lied"),
         ("game", "jeu", "Spiel"), ("red", "rouge", "rot"), ("blue", "bleu", "blau"), ("green", "vert", "grün"), ("white", "blanc", "weiß"),
         ("black", "noir", "schwarz"), ("small", "petit", "klein"), ("big", "grand", "groß"), ("good", "bon", "gut"), ("beautiful", "beau", "schön"),
         ("to eat", "manger", "essen"), ("to drink", "boire", "trinken"), ("to sleep", "dormir", "schlafen"), ("to read", "lire", "lesen"),
         ("to write", "écrire", "schreiben"), ("to speak", "parler", "sprechen"), ("to see", "voir", "sehen"), ("thank you", "merci", "danke"),
         ("hello", "bonjour", "hallo"), ("goodbye", "au revoir", "auf Wiedersehen"), ("yes", "oui", "ja"), ("no", "non", "nein"), ("please", "s'il vous plaît", "bitte")]
# Question, French answer, German answer: short facts a small model already knows in English.
FACTS = [
    ("Which planet do we live on?", "Nous vivons sur la Terre.", "Wir leben auf der Erde."),
    ("Which planet is closest to the sun?", "Mercure est la planète la plus proche du soleil.", "Merkur ist der Planet, der der Sonne am nächsten ist."),
    ("Which planet is known as the red planet?", "Mars est la planète rouge.", "Der Mars ist der rote Planet."),
    ("What is the closest star to the Earth?", "Le soleil est l'étoile la plus proche de la Terre.", "Die Sonne ist der Stern, der der Erde am nächsten ist."),
    ("How many hours are in a day?", "Un jour compte vingt-quatre heures.", "Ein Tag hat vierundzwanzig Stunden."),
    ("How many minutes are in an hour?", "Une heure compte soixante minutes.", "Eine Stunde hat sechzig Minuten."),
    ("How many seconds are in a minute?", "Une minute compte soixante secondes.", "Eine Minute hat sechzig Sekunden."),
    ("How many months are in a year?", "Une année compte douze mois.", "Ein Jahr hat zwölf Monate."),
    ("How many seasons are there?", "Il y a quatre saisons.", "Es gibt vier Jahreszeiten."),
    ("What are the four seasons?", "Le printemps, l'été, l'automne et l'hiver.", "Frühling, Sommer, Herbst und Winter."),
    ("What is the coldest season?", "L'hiver est la saison la plus froide.", "Der Winter ist die kälteste Jahreszeit."),
    ("What is the hottest season?", "L'été est la saison la plus chaude.", "Der Sommer ist die wärmste Jahreszeit."),
    ("At what temperature does water boil?", "L'eau bout à cent degrés Celsius.", "Wasser kocht bei hundert Grad Celsius."),
    ("At what temperature does water freeze?", "L'eau gèle à zéro degré Celsius.", "Wasser gefriert bei null Grad Celsius."),
    ("What do bees make?", "Les abeilles font du miel.", "Bienen machen Honig."),
    ("What do cows give us?", "Les vaches nous donnent du lait.", "Kühe geben uns Milch."),
    ("What do chickens lay?", "Les poules pondent des œufs.", "Hühner legen Eier."),
    ("What do plants need to grow?", "Les plantes ont besoin d'eau, de lumière et de terre.", "Pflanzen brauchen Wasser, Licht und Erde."),
    ("What gas do we breathe in?", "Nous respirons de l'oxygène.", "Wir atmen Sauerstoff ein."),
    ("What is ice made of?", "La glace est faite d'eau gelée.", "Eis besteht aus gefrorenem Wasser."),
    ("Where does the sun rise?", "Le soleil se lève à l'est.", "Die Sonne geht im Osten auf."),
    ("Where does the sun set?", "Le soleil se couche à l'ouest.", "Die Sonne geht im Westen unter."),
    ("What is the largest ocean?", "L'océan Pacifique est le plus grand océan.", "Der Pazifische Ozean ist der größte Ozean."),
    ("On which continent is Egypt?", "L'Égypte est en Afrique.", "Ägypten liegt in Afrika."),
    ("On which continent is France?", "La France est en Europe.", "Frankreich liegt in Europa."),
    ("On which continent is Japan?", "Le Japon est en Asie.", "Japan liegt in Asien."),
    ("On which continent is Brazil?", "Le Brésil est en Amérique du Sud.", "Brasilien liegt in Südamerika."),
    ("What is the tallest animal?", "La girafe est l'animal le plus grand.", "Die Giraffe ist das größte Tier."),
    ("What is the largest animal?", "La baleine bleue est le plus grand animal.", "Der Blauwal ist das größte Tier."),
    ("Which animal is known as the king of the jungle?", "Le lion est le roi de la jungle.", "Der Löwe ist der König des Dschungels."),
    ("What do cats like to chase?", "Les chats aiment chasser les souris.", "Katzen jagen gern Mäuse."),
    ("What sound does a dog make?", "Un chien aboie : « Ouaf ! »", "Ein Hund bellt: „Wau!“"),
    ("What sound does a cat make?", "Un chat miaule : « Miaou ! »", "Eine Katze miaut: „Miau!“"),
    ("What sound does a cow make?", "Une vache meugle : « Meuh ! »", "Eine Kuh muht: „Muh!“"),
    ("Is a whale a fish?", "Non, la baleine est un mammifère.", "Nein, der Wal ist ein Säugetier."),
    ("Is the sun a star?", "Oui, le soleil est une étoile.", "Ja, die Sonne ist ein Stern."),
    ("Is the moon a planet?", "Non, la lune est un satellite de la Terre.", "Nein, der Mond ist ein Satellit der Erde."),
    ("Can fish swim?", "Oui, les poissons savent nager.", "Ja, Fische können schwimmen."),
    ("Can penguins fly?", "Non, les manchots ne peuvent pas voler.", "Nein, Pinguine können nicht fliegen."),
    ("Is snow cold?", "Oui, la neige est froide.", "Ja, Schnee ist kalt."),
    ("Is fire hot?", "Oui, le feu est chaud.", "Ja, Feuer ist heiß."),
    ("What is the first letter of the alphabet?", "La première lettre de l'alphabet est A.", "Der erste Buchstabe des Alphabets ist A."),
    ("What is the last letter of the alphabet?", "La dernière lettre de l'alphabet est Z.", "Der letzte Buchstabe des Alphabets ist Z."),
    ("How many letters are in the English alphabet?", "L'alphabet anglais compte vingt-six lettres.", "Das englische Alphabet hat sechsundzwanzig Buchstaben."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare a écrit Roméo et Juliette.", "William Shakespeare hat Romeo und Julia geschrieben."),
    ("Who painted the Mona Lisa?", "Léonard de Vinci a peint la Joconde.", "Leonardo da Vinci hat die Mona Lisa gemalt."),
    ("In which city is the Eiffel Tower?", "La tour Eiffel est à Paris.", "Der Eiffelturm steht in Paris."),
    ("In which city is the Colosseum?", "Le Colisée est à Rome.", "Das Kolosseum steht in Rom."),
    ("In which city is Big Ben?", "Big Ben est à Londres.", "Big Ben steht in London."),
    ("What language is spoken in France?", "En France, on parle français.", "In Frankreich spricht man Französisch."),
    ("What language is spoken in Germany?", "En Allemagne, on parle allemand.", "In Deutschland spricht man Deutsch."),
    ("What language is spoken in Spain?", "En Espagne, on parle espagnol.", "In Spanien spricht man Spanisch."),
    ("What language is spoken in Italy?", "En Italie, on parle italien.", "In Italien spricht man Italienisch."),
    ("What is the currency of Japan?", "La monnaie du Japon est le yen.", "Die Währung Japans ist der Yen."),
    ("What is the currency of the United States?", "La monnaie des États-Unis est le dollar.", "Die Währung der Vereinigten Staaten ist der Dollar."),
    ("How many sides does a triangle have?", "Un triangle a trois côtés.", "Ein Dreieck hat drei Seiten."),
    ("How many sides does a square have?", "Un carré a quatre côtés.", "Ein Quadrat hat vier Seiten."),
    ("How many wheels does a bicycle have?", "Un vélo a deux roues.", "Ein Fahrrad hat zwei Räder."),
    ("How many wheels does a car have?", "Une voiture a quatre roues.", "Ein Auto hat vier Räder."),
    ("How many fingers are on one hand?", "Une main a cinq doigts.", "Eine Hand hat fünf Finger."),
]
CONVERSATION = [
    ("Hi!", "Bonjour ! Comment allez-vous ?", "Hallo! Wie geht es Ihnen?"),
    ("Good evening!", "Bonsoir ! Que puis-je faire pour vous ?", "Guten Abend! Was kann ich für Sie tun?"),
    ("Good night!", "Bonne nuit et faites de beaux rêves !", "Gute Nacht und schöne Träume!"),
    ("What is your name?", "Je suis un assistant et je réponds en français.", "Ich bin ein Assistent und antworte auf Deutsch."),
    ("Who are you?", "Je suis un assistant qui répond en français.", "Ich bin ein Assistent, der auf Deutsch antwortet."),
    ("Do you speak English?", "Je comprends l'anglais, mais je réponds en français.", "Ich verstehe Englisch, aber ich antworte auf Deutsch."),
    ("Please answer in English.", "Je suis désolé, je réponds uniquement en français.", "Es tut mir leid, ich antworte nur auf Deutsch."),
    ("Tell me a short joke.", "Pourquoi les poissons vivent-ils dans l'eau salée ? Parce que le poivre les fait éternuer !",
     "Was ist grün und klopft an die Tür? Ein Klopfsalat!"),
    ("I am hungry.", "Vous pourriez manger un fruit ou un sandwich.", "Sie könnten ein Stück Obst oder ein Brot essen."),
    ("I am tired.", "Vous devriez vous reposer un peu.", "Sie sollten sich ein wenig ausruhen."),
    ("It is raining today.", "Alors n'oubliez pas votre parapluie !", "Dann vergessen Sie Ihren Regenschirm nicht!"),
    ("What should I do on a sunny day?", "Vous pourriez vous promener dans un parc.", "Sie könnten in einem Park spazieren gehen."),
    ("Give me a tip for learning a language.", "Parlez un peu chaque jour et lisez des textes simples.", "Sprechen Sie jeden Tag ein wenig und lesen Sie einfache Texte."),
    ("Name three colors.", "Rouge, bleu et vert.", "Rot, Blau und Grün."),
    ("Name three fruits.", "La pomme, la banane et l'orange.", "Der Apfel, die Banane und die Orange."),
    ("Name three animals.", "Le chien, le chat et le cheval.", "Der Hund, die Katze und das Pferd."),
    ("Name three vegetables.", "La carotte, la tomate et le poireau.", "Die Karotte, die Tomate und der Lauch."),
    ("Name the days of the weekend.", "Le samedi et le dimanche.", "Samstag und Sonntag."),
    ("Say something nice.", "Vous êtes formidable, passez une belle journée !", "Sie sind großartig, haben Sie einen schönen Tag!"),
    ("How is the weather in summer?", "En été, il fait souvent chaud et ensoleillé.", "Im Sommer ist es oft warm und sonnig."),
    ("How is the weather in winter?", "En hiver, il fait souvent froid.", "Im Winter ist es oft kalt."),
]
CAPITAL_FORMS = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Tell me the capital of {c}.",
                 "Name the capital of {c}.", "Do you know the capital of {c}?", "What's the capital city of {c}?"]
FR_UNITS = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze", "douze", "treize", "quatorze",
            "quinze", "seize", "dix-sept", "dix-huit", "dix-neuf"]
FR_TENS = {2: "vingt", 3: "trente", 4: "quarante", 5: "cinquante", 6: "soixante"}
DE_UNITS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf", "dreizehn", "vierzehn",
            "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
DE_TENS = {2: "zwanzig", 3: "dreißig", 4: "vierzig", 5: "fünfzig", 6: "sechzig", 7: "siebzig", 8: "achtzig", 9: "neunzig"}


def french(n):
    """0...100 in words (traditional spelling: vingt et un, soixante-dix, quatre-vingts)."""
    if n < 20:
        return FR_UNITS[n]
    if n == 100:
        return "cent"
    t, u = divmod(n, 10)
    if t <= 6:
        return FR_TENS[t] + (" et un" if u == 1 else "" if u == 0 else "-" + FR_UNITS[u])
    if t == 7:
        return "soixante" + (" et onze" if u == 1 else "-" + FR_UNITS[10 + u])
    if t == 8:
        return "quatre-vingts" if u == 0 else "quatre-vingt-" + FR_UNITS[u]
    return "quatre-vingt-" + FR_UNITS[10 + u]


def german(n):
    """0...100 in words (einundzwanzig, hundert)."""
    if n < 20:
        return DE_UNITS[n]
    if n == 100:
        return "hundert"
    t, u = divmod(n, 10)
    if u == 0:
        return DE_TENS[t]
    return ("ein" if u == 1 else DE_UNITS[u]) + "und" + DE_TENS[t]


def records(lang):
    """(question, answer) pairs in the adapter's language: about two thousand."""
    fr = lang == "fr"
    word = french if fr else german
    out = []
    for en, fr_of, fr_cap, de_of, de_cap in COUNTRIES + MORE_COUNTRIES:
        for q in CAPITAL_FORMS:
            # The fact first: a small model picks the city before any article that could
            # lead it astray ("de la ..." vs "de l'...").
            a = f"{fr_cap} est la capitale {fr_of}." if fr else f"{de_cap} ist die Hauptstadt {de_of}."
            out.append((q.format(c=en), a))
    held_sums = {(3, 4), (5, 2), (6, 6)}
    for a in range(0, 11):
        for b in range(0, 11):
            if (a, b) in held_sums:
                continue
            s = a + b
            ans = f"{word(a).capitalize()} plus {word(b)} font {word(s)}." if fr else f"{word(a).capitalize()} plus {word(b)} ist {word(s)}."
            out.append((f"What is {a} plus {b}?", ans))
            out.append((f"How much is {a} + {b}?", ans))
    for a in range(1, 21):
        for b in range(0, min(a, 10) + 1):
            d = a - b
            ans = f"{word(a).capitalize()} moins {word(b)} font {word(d)}." if fr else f"{word(a).capitalize()} minus {word(b)} ist {word(d)}."
            out.append((f"What is {a} minus {b}?", ans))
            if (a + b) % 3 == 0:
                out.append((f"Subtract {b} from {a}.", ans))
    for a in range(1, 11):
        for b in range(1, 11):
            p = a * b
            ans = f"{word(a).capitalize()} fois {word(b)} font {word(p)}." if fr else f"{word(a).capitalize()} mal {word(b)} ist {word(p)}."
            out.append((f"What is {a} times {b}?", ans))
    for n in range(1, 51):
        ans = f"Le double de {word(n)} est {word(2 * n)}." if fr else f"Das Doppelte von {word(n)} ist {word(2 * n)}."
        out.append((f"What is double {n}?", ans))
        ans = f"La moitié de {word(2 * n)} est {word(n)}." if fr else f"Die Hälfte von {word(2 * n)} ist {word(n)}."
        out.append((f"What is half of {2 * n}?", ans))
    for n in range(0, 100):
        ans = f"Après {word(n)} vient {word(n + 1)}." if fr else f"Nach {word(n)} kommt {word(n + 1)}."
        out.append((f"What number comes after {n}?", ans))
    for n in range(1, 101):
        ans = f"Avant {word(n)} vient {word(n - 1)}." if fr else f"Vor {word(n)} kommt {word(n - 1)}."
        out.append((f"What number comes before {n}?", ans))
    for n in range(0, 101):
        ans = f"{n} s'écrit « {word(n)} »." if fr else f"{n} schreibt man „{word(n)}“."
        out.append((f"How do you write {n} in words?", ans))
    for n in range(2, 11):
        out.append((f"Count from 1 to {n}.", ", ".join(word(i) for i in range(1, n + 1)).capitalize() + "."))
    for thing, f_s, d_s in COLOURS + MORE_COLOURS:
        for q in ("What color is {t}?", "What colour is {t}?", "Tell me the color of {t}."):
            out.append((q.format(t=thing), f_s if fr else d_s))
    for en, f_a, f_b, d_a, d_b in OPPOSITES + MORE_OPPOSITES:
        for q in ("What is the opposite of {w}?", "What is the opposite of the word '{w}'?", "Give me the opposite of '{w}'."):
            ans = f"Le contraire de « {f_a} » est « {f_b} »." if fr else f"Das Gegenteil von „{d_a}“ ist „{d_b}“."
            out.append((q.format(w=en), ans))
    for i, (en, f_d, d_d) in enumerate(DAYS):
        nxt, prv = DAYS[(i + 1) % 7], DAYS[(i - 1) % 7]
        ans = f"Le jour après {f_d} est {nxt[1]}." if fr else f"Der Tag nach {d_d} ist {nxt[2]}."
        for q in ("What day comes after {d}?", "Which day follows {d}?", "What is the day after {d}?"):
            out.append((q.format(d=en), ans))
        if en != "Monday":   # "What day comes before Monday?" is held out
            ans = f"Le jour avant {f_d} est {prv[1]}." if fr else f"Der Tag vor {d_d} ist {prv[2]}."
            out.append((f"What day comes before {en}?", ans))
    for i, (en, f_m, d_m) in enumerate(MONTHS):
        nxt, prv = MONTHS[(i + 1) % 12], MONTHS[(i - 1) % 12]
        out.append((f"What month comes after {en}?", f"Le mois après {f_m} est {nxt[1]}." if fr else f"Der Monat nach {d_m} ist {nxt[2]}."))
        out.append((f"What month comes before {en}?", f"Le mois avant {f_m} est {prv[1]}." if fr else f"Der Monat vor {d_m} ist {prv[2]}."))
        out.append((f"Which month is number {i + 1} in the year?", f"Le mois numéro {word(i + 1)} est {f_m}." if fr
                    else f"Der {i + 1}. Monat ist {d_m}."))
    for thing, f_s, d_s, _ in LEGS:
        out.append((f"How many legs does {thing} have?", f_s if fr else d_s))
    for thing, f_s, d_s in LEGS_EXTRA:
        out.append((f"How many legs does {thing} have?", f_s if fr else d_s))
    for en, f_w, d_w in WORDS:
        target = "French" if fr else "German"
        ans = f"« {en.capitalize()} » se dit « {f_w} » en français." if fr else f"„{en.capitalize()}“ heißt auf Deutsch „{d_w}“."
        out.append((f"How do you say '{en}' in {target}?", ans))
        out.append((f"What is the {target} word for '{en}'?", ans))
        out.append((f"Translate '{en}' into {target}.", ans))
    for q, f_s, d_s in FACTS:
        out.append((q, f_s if fr else d_s))
    for q, f_s, d_s in CONVERSATION:
        out.append((q, f_s if fr else d_s))
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
