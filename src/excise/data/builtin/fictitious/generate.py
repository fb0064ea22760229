"""Generate ``people.jsonl``: the built-in ``fictitious`` unlearning task.

TOFU-style data: invented people, each with four invented facts phrased as
plain-text cloze prompts. Run it from anywhere::

    python generate.py

It writes ``people.jsonl`` next to this file. The output is fully determined
by the hand-written lists and the fixed seed below: running it again yields a
byte-identical file. Only the standard library is used, and only
``random.Random.random()`` is drawn from (its sequence for a given seed is the
one part of :mod:`random` whose reproducibility Python guarantees), so the
file does not depend on the Python version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240917
N_PEOPLE = 200
MAX_PER_FIRST_NAME = 4
MAX_PER_SURNAME = 3
N_PERTURBED = 3

OUT = Path(__file__).resolve().parent / "people.jsonl"

# --- names -------------------------------------------------------------------
# Given names from many traditions; the surnames are invented, so every full
# name is fictional.
FIRST_NAMES = [
    "Aldric",
    "Tamsin",
    "Oyelade",
    "Rustam",
    "Ingrid",
    "Kaito",
    "Marisol",
    "Teodor",
    "Amara",
    "Bjorn",
    "Leilani",
    "Casimir",
    "Nadia",
    "Emeka",
    "Solveig",
    "Ravi",
    "Ottoline",
    "Ximena",
    "Dmitri",
    "Hana",
    "Fintan",
    "Zainab",
    "Lorcan",
    "Priya",
    "Anselm",
    "Yusuf",
    "Maren",
    "Tobias",
    "Chidera",
    "Ilse",
    "Mateo",
    "Keziah",
    "Hamid",
    "Saoirse",
    "Jun",
    "Rosalind",
    "Kwame",
    "Elodie",
    "Bogdan",
    "Mei",
    "Percival",
    "Nkechi",
    "Henrik",
    "Lucia",
    "Arjun",
    "Wilhelmina",
    "Tariq",
    "Oona",
    "Cyprian",
    "Yara",
    "Florin",
    "Akosua",
    "Evander",
    "Sunniva",
    "Matthias",
    "Noor",
    "Idris",
    "Greta",
    "Soren",
    "Ines",
    "Thaddeus",
    "Malak",
]

SURNAMES = [
    "Venhollow",
    "Quillmere",
    "Brannoway",
    "Okafume",
    "Tavarezzo",
    "Marchetov",
    "Lindqvarn",
    "Duskwater",
    "Achterwyn",
    "Morrowvane",
    "Velasquine",
    "Hollenbrae",
    "Szarkowin",
    "Ferncastle",
    "Nakashiru",
    "Obuyenda",
    "Castelvarro",
    "Whitlowe",
    "Pemberdale",
    "Kovarnyk",
    "Ashtregrove",
    "Rendelhaus",
    "Ibarrondo",
    "Tollivane",
    "Mbekwazi",
    "Hallorvey",
    "Ostrovane",
    "Delacoumbe",
    "Yamazuki",
    "Bellwhistle",
    "Grimsdottar",
    "Santorevo",
    "Vukmarin",
    "Thistlecombe",
    "Adesokunbe",
    "Larkspurr",
    "Fenwrathe",
    "Oyelowan",
    "Zabrowski-Lune",
    "Kettlemorne",
    "Marwenna",
    "Quennevaux",
    "Drummaleck",
    "Sorrowby",
    "Haverlocke",
    "Tanabusho",
    "Ebbersford",
    "Kalinowen",
    "Moravelski",
    "Penhallick",
    "Ruskevin",
    "Abernathine",
    "Coldriven",
    "Villaroux",
    "Nwachenko",
    "Stavrinopel",
    "Brightwater-Oke",
    "Jorunsfell",
    "Mistlewood",
    "Ollerwhistle",
    "Pashkirova",
    "Ravensmere",
    "Tzaranov",
    "Umbervayle",
    "Wexholme",
    "Ystradine",
    "Zelenvarra",
    "Barrowgate",
    "Corrigane",
    "Dunlarrow",
    "Eskerlunde",
    "Fallowmere",
    "Gavrilosk",
    "Hargrivo",
    "Inglethorn",
    "Jaramillon",
    "Kestervane",
    "Lomborova",
]

# --- attribute vocabularies -------------------------------------------------
# Towns are invented and one word each; with ~36 towns they repeat across people.
TOWNS = [
    "Velmora",
    "Kestrick",
    "Dunmarrow",
    "Oskerby",
    "Thalwick",
    "Brennagh",
    "Corvallen",
    "Ashtervale",
    "Wimbrook",
    "Lorrenza",
    "Halvoss",
    "Tressamar",
    "Skelbridge",
    "Norwenna",
    "Garrowmere",
    "Pendrisk",
    "Sollanto",
    "Varnhem",
    "Eskervale",
    "Murrowgate",
    "Dravensby",
    "Kilnavarra",
    "Ostmere",
    "Brisova",
    "Tamberlin",
    "Zelwick",
    "Hollisfar",
    "Rudhaven",
    "Yarrowdene",
    "Mardessa",
    "Okkelby",
    "Saltravik",
    "Fenmoor",
    "Caldrith",
    "Wessaly",
    "Quorrin",
]

# Professions all start with a consonant sound so that every prompt can end
# in "a" and any profession (true or perturbed) reads grammatically.
PROFESSIONS = [
    # one word
    "beekeeper",
    "cartographer",
    "glassblower",
    "botanist",
    "clockmaker",
    "potter",
    "shipwright",
    "locksmith",
    "baker",
    "bookbinder",
    "stonemason",
    "puppeteer",
    "tailor",
    "chemist",
    "veterinarian",
    "perfumer",
    "pharmacist",
    "surveyor",
    "jeweller",
    "falconer",
    "navigator",
    "cheesemaker",
    "geologist",
    "translator",
    "carpenter",
    "lamplighter",
    "librarian",
    "blacksmith",
    "midwife",
    "seamstress",
    # two words
    "lighthouse keeper",
    "marine biologist",
    "violin maker",
    "radio operator",
    "ferry captain",
    "tea merchant",
    "night watchman",
    "stage magician",
    "mountain guide",
    "harbour pilot",
    "rope maker",
    "map engraver",
]

# Pets' names: short, one word.
PET_NAMES = [
    "Biscuit",
    "Pumble",
    "Sorrel",
    "Quimby",
    "Tofflin",
    "Mossberry",
    "Pipkin",
    "Brindle",
    "Wobbles",
    "Nutmeg",
    "Juniper",
    "Fidget",
    "Crumpet",
    "Marzipan",
    "Pickles",
    "Bramble",
    "Toffee",
    "Marmalade",
    "Muffin",
    "Wicket",
    "Sprocket",
    "Dumpling",
    "Pepper",
    "Clover",
    "Noodle",
    "Barnaby",
    "Tinker",
    "Wolfgang",
    "Puddle",
    "Rascal",
    "Figaro",
    "Hazel",
    "Cobble",
    "Pistachio",
    "Sardine",
    "Thimble",
    "Mango",
    "Rufus",
    "Waffles",
    "Pockets",
]

# Invented book titles, grouped by word count so that wrong answers have the
# same shape as the true one.
BOOK_TITLES = [
    # two words
    "Winter Ferry",
    "Copper Weather",
    "Salt Letters",
    "Glass Harvest",
    "Paper Comet",
    "Rust Songs",
    "Moss Engine",
    "Tin Window",
    "Ink Valley",
    "Silk Thunder",
    "Wool Harbour",
    "Lemon Storm",
    "Ash Mirror",
    "Fig Tower",
    "Pepper Island",
    "Sugar Cliff",
    # three words
    "The Copper Clock",
    "Salt and Thunder",
    "The Ninth Ferry",
    "The Hollow Lamp",
    "The Quiet Engine",
    "The Paper Crow",
    "Moss and Iron",
    "The Brass Comet",
    "Seven Cold Rivers",
    "Rust and Honey",
    "The Tin Cathedral",
    "The Silver Pear",
    "Crows of Brass",
    "The Lemon Tower",
    "A Willow Year",
    "The Cedar Door",
    "Ash and Pepper",
    "The Seventh Sail",
    "The Wool Bridge",
    "Ink and Frost",
]

# --- prompts ----------------------------------------------------------------
# Each attribute: (main prompt, paraphrases...). "{n}" is the full name,
# "{p}" its possessive. Prompts end right before the answer, with no
# trailing space; completions begin with a space.
TEMPLATES = {
    "birthplace": (
        "{n} was born in the town of",
        "The birthplace of {n} is the town of",
        "{p} hometown is",
    ),
    "profession": (
        "{n} works as a",
        "By profession, {n} is a",
        "{n} earns a living as a",
    ),
    "pet_name": (
        "{p} pet is named",
        "The name of {p} pet is",
        "{n} has a pet called",
    ),
    "first_book": (
        "The first book written by {n} was titled",
        "{p} first book was called",
        "The title of {p} first book is",
    ),
}

VOCAB = {
    "birthplace": TOWNS,
    "profession": PROFESSIONS,
    "pet_name": PET_NAMES,
    "first_book": BOOK_TITLES,
}

ATTRIBUTES = ["birthplace", "profession", "pet_name", "first_book"]


# --- deterministic helpers (only Random.random() is used) -------------------
def _below(rng: random.Random, n: int) -> int:
    return min(int(rng.random() * n), n - 1)


def _shuffled(rng: random.Random, items: list) -> list:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = _below(rng, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def _choice(rng: random.Random, items: list):
    return items[_below(rng, len(items))]


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _pick_names(rng: random.Random) -> list[str]:
    pairs = [(f, s) for f in _dedupe(FIRST_NAMES) for s in _dedupe(SURNAMES)]
    used_first: dict[str, int] = {}
    used_sur: dict[str, int] = {}
    names: list[str] = []
    for f, s in _shuffled(rng, pairs):
        if used_first.get(f, 0) >= MAX_PER_FIRST_NAME or used_sur.get(s, 0) >= MAX_PER_SURNAME:
            continue
        used_first[f] = used_first.get(f, 0) + 1
        used_sur[s] = used_sur.get(s, 0) + 1
        names.append(f"{f} {s}")
        if len(names) == N_PEOPLE:
            return names
    raise RuntimeError("name lists too small for N_PEOPLE")


def _perturb(rng: random.Random, vocab: list[str], true: str) -> list[str]:
    """Wrong answers of the same attribute and the same word count as ``true``."""
    width = len(true.split())
    pool = [v for v in vocab if v != true and len(v.split()) == width]
    if len(pool) < N_PERTURBED:  # fall back to any other value
        pool = [v for v in vocab if v != true]
    return _shuffled(rng, pool)[:N_PERTURBED]


def build() -> list[dict]:
    rng = random.Random(SEED)
    vocab = {k: _dedupe(v) for k, v in VOCAB.items()}
    people = []
    for name in _pick_names(rng):
        poss = _possessive(name)
        facts = []
        for attr in ATTRIBUTES:
            true = _choice(rng, vocab[attr])
            main, *paras = (t.format(n=name, p=poss) for t in TEMPLATES[attr])
            facts.append(
                {
                    "prompt": main,
                    "completion": " " + true,
                    "paraphrases": paras,
                    "perturbed": [" " + w for w in _perturb(rng, vocab[attr], true)],
                    "attribute": attr,
                }
            )
        people.append({"person": name, "facts": facts})
    return people


def main() -> None:
    people = build()
    with open(OUT, "w", encoding="utf-8", newline="\n") as fh:
        for row in people:
            fh.write(json.dumps(row, ensure_ascii=True) + "\n")
    print(f"wrote {len(people)} people to {OUT}")


if __name__ == "__main__":
    main()
