"""Generate ``requests.jsonl``: the built-in ``counterfact-mini`` edit requests.

Run it from the repository root (it needs the bundled model; ~7-10 minutes on one CPU thread)::

    python src/excise/data/builtin/counterfact_mini/generate.py

1. Every fact of ``facts.py`` is rendered with every cloze template of its relation and every
   accepted surface form of its answer, and scored with the model (teacher forced: a pair passes
   when each answer token is the argmax). A fact is *known* when one template passes and
   *editable* when three do (main prompt + two paraphrases); its answer form is the one that
   passes most templates.
2. Edits are chosen deterministically so that no neighbour or probe of one request relies on a
   fact that another request edits: every request can be applied with every other one. A set of
   well-known "anchor" countries is never edited; cities, companies and people move to them, so
   two-hop probes ("the capital of the country where Lyon is") rest on facts that stay put.
3. Each request gets its paraphrases (passing templates), neighbours (other subjects' known
   facts of the same relation, those sharing the true answer first) and probes: portability,
   logical, compositional and alias probes (answer expected after the edit) and relation
   specificity probes (another known relation of the subject, which must not change). A probe is
   kept only if every fact it rests on is known; an alias or logical probe only if the model
   answers it correctly for the true fact before the edit.
4. Requests with fewer than 2 paraphrases, 3 neighbours or 1 forward probe, or whose new target
   the model already produces, are dropped. Survivor counts go into the header line.

Only ``hashlib`` orders choices, so a re-run on the same model reproduces the file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "requests.jsonl"
MODEL = "smollm2-135m"
N_ANCHORS = 16  # best-known countries, never edited: the new homes of cities, companies, people
MAX_EDITS_PER_COUNTRY = 3
MAX_PARAPHRASES = 3
MAX_NEIGHBOURS = 5
MIN_STABLE = 8  # known facts of a relation kept unedited, so every request finds neighbours

_spec = importlib.util.spec_from_file_location("counterfact_mini_facts", HERE / "facts.py")
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

# cloze templates per relation, preferred first; "<S>" is the subject
TEMPLATES: dict[str, list[str]] = {
    "capital": [
        "The capital of <S> is",
        "The capital city of <S> is",
        "The government of <S> is based in",
        "The city that is the capital of <S> is",
        "The capital of the country <S> is",
        "<S>'s capital is",
        "The capital of <S> is the city of",
    ],
    "language": [
        "The official language of <S> is",
        "The main language spoken in <S> is",
        "People in <S> speak",
        "The national language of <S> is",
        "Most people in <S> speak",
        "The language spoken in <S> is",
        "The people of <S> speak",
    ],
    "continent": [
        "<S> is a country on the continent of",
        "<S> is located in the continent of",
        "<S> is on the continent of",
        "<S> is part of the continent of",
        "<S> is a country in",
        "<S> is a country located on the continent of",
        "The country of <S> is on the continent of",
    ],
    "currency": [
        "The official currency of <S> is the",
        "The currency of <S> is the",
        "The currency used in <S> is the",
        "The currency in <S> is the",
        "The national currency of <S> is the",
        "People in <S> pay with the",
    ],
    "located_in": [
        "The city of <S> is in the country of",
        "<S> is a city in the country of",
        "<S> is located in the country of",
        "<S> is in the country of",
        "<S> is a major city in",
        "The city of <S> is located in the country of",
        "<S> is a city located in the country of",
        "<S> lies in the country of",
    ],
    "landmark_city": [
        "<S> is located in the city of",
        "You can visit <S> in",
        "<S> is a landmark in the city of",
        "<S> stands in the city of",
        "<S> is in the city of",
        "<S> is a famous landmark in",
        "<S> can be found in the city of",
        "<S> is situated in the city of",
        "Tourists can see <S> in the city of",
    ],
    "company_country": [
        "<S> is a company from the country of",
        "<S> is a company from",
        "<S> is a company based in",
        "<S> is a brand from",
        "<S> was founded in the country of",
        "<S> is a company headquartered in the country of",
        "<S> is a company based in the country of",
        "The company <S> is from the country of",
    ],
    "nationality": [
        "<S> was born in the country of",
        "<S> is from the country of",
        "<S> came from the country of",
        "<S> was from the country of",
        "The home country of <S> is",
        "<S> was a native of the country of",
        "<S> grew up in the country of",
        "<S> was a person from the country of",
    ],
    "occupation": [
        "<S> worked as a",
        "<S> is best known as a",
        "By profession, <S> was a",
        "<S> is famous as a",
    ],
    "author": [
        "The famous book <S> was written by",
        "<S> is a novel by",
        "The book <S> was written by",
        "<S> was written by",
        "<S> is a work by",
        "The novel <S> was written by",
        "<S> is a famous book by",
        "<S> is a book written by",
    ],
}
COUNTRY_ATTRIBUTES = ("capital", "language", "continent", "currency")
EDITED_RELATIONS = (
    *COUNTRY_ATTRIBUTES,
    "located_in",
    "landmark_city",
    "company_country",
    "nationality",
    "author",
)
FORWARD = ("portability", "logical", "compositional", "alias")
# wordings of the inverse of "the capital of X is C", best first
INVERSE_CAPITAL = (
    "The city of <S> is the capital of",
    "<S> is the capital of the country of",
    "<S> is the capital city of",
    "<S> is the capital of",
)
# how a two-hop question names the country of a city, company or person
WHERE = {
    "located_in": "the country where <S> is located",
    "company_country": "the country where <S> was founded",
    "nationality": "the country where <S> was born",
}
# one-hop consequences of a country's attribute for its cities, companies and people
IMPLICIT = {
    "located_in": {
        "language": "People in <S> speak",
        "continent": "<S> is a city on the continent of",
        "currency": "In <S>, people pay with the",
    },
    "company_country": {
        "language": "At the headquarters of <S>, people speak",
        "continent": "<S> is a company from the continent of",
    },
    "nationality": {
        "language": "The native language of <S> was",
        "continent": "<S> was born on the continent of",
    },
}
MAX_MEMBERS = 2  # cities, people or companies used in the probes of a country's edit
# wordings in which the model names a subject's nationality adjective ("a famous Spanish")
DEMONYM_PATTERNS = {
    "located_in": ("<S> is a major", "<S> is a"),
    "company_country": ("<S> is a famous", "The company <S> is a", "<S> is a"),
    "nationality": ("<S> was a famous", "<S> was a"),
}


def fill(pattern: str, name: str) -> str:
    """Put ``name`` into ``pattern``; a leading "the" is capitalised at the start of a sentence."""
    if pattern.startswith("<S>") and name.startswith("the "):
        name = "The " + name[4:]
    return pattern.replace("<S>", name)


def template(pattern: str, name: str) -> tuple[str, str]:
    """The request form: a prompt with "{}" for the subject, and the subject without its article."""
    article, bare = ("the ", name[4:]) if name.startswith("the ") else ("", name)
    return fill(pattern, article + "{}"), bare


def forms(value: str) -> tuple[str, ...]:
    return tuple(value.split("|"))


def rank(*parts: str) -> str:
    """A deterministic pseudo-random order key."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def shuffled_keys(keys: list[tuple[str, str]], seed: str) -> list[tuple[str, str]]:
    return sorted(keys, key=lambda key: rank(seed, *key))


def shuffled(items: list[Known], seed: str) -> list[Known]:
    return sorted(items, key=lambda k: rank(seed, k.fact.subject))


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str  # entity name, may start with "the "
    answer: str  # the answer entity (a country, city or person) or value
    forms: tuple[str, ...]  # accepted surface forms of the answer


def all_facts() -> list[Fact]:
    facts: list[Fact] = []

    def country_forms(country: str) -> tuple[str, ...]:
        return F.COUNTRY_ANSWER_FORMS.get(country, (country,))

    for country, values in F.COUNTRIES.items():
        for relation, value in zip(COUNTRY_ATTRIBUTES, values, strict=True):
            facts.append(Fact(relation, country, forms(value)[0], forms(value)))
        capital = forms(values[0])[0]
        facts.append(Fact("located_in", capital, country, country_forms(country)))
    for city, country in F.CITIES.items():
        facts.append(
            Fact(
                "located_in", city, country, F.CITY_COUNTRY_FORMS.get(city, country_forms(country))
            )
        )
    for landmark, city in F.LANDMARKS.items():
        facts.append(Fact("landmark_city", landmark, city, (city,)))
    for company, (country, _) in F.COMPANIES.items():
        facts.append(Fact("company_country", company, country, country_forms(country)))
    for person, (country, occupation) in F.PEOPLE.items():
        facts.append(Fact("nationality", person, country, country_forms(country)))
        facts.append(Fact("occupation", person, occupation, (occupation,)))
    for book, author in F.BOOKS.items():
        facts.append(Fact("author", book, author, (author,)))
    return facts


def build_facts() -> list[Fact]:
    """The facts worth asking: an answer spelled out in its subject is no test of knowledge."""
    return [
        f for f in all_facts() if not any(form.lower() in f.subject.lower() for form in f.forms)
    ]


@dataclass
class Known:
    fact: Fact
    form: str  # the surface form the model produces
    passing: list[str]  # templates the model completes with ``form``, preferred first


class Scorer:
    """Teacher-forced greedy exact match of (prompt, answer) pairs, memoised."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cache: dict[tuple[str, str], bool] = {}
        self.asked: set[tuple[str, str]] = set()  # pairs this run needed

    def run(self, pairs: list[tuple[str, str]]) -> None:
        from excise.scoring import score_pairs

        self.asked.update(pairs)
        todo = sorted({p for p in pairs if p not in self.cache})
        if not todo:
            return
        stats = score_pairs(
            self.model, self.tokenizer, [(p, " " + a) for p, a in todo], "raw", batch_size=64
        )
        self.cache.update(zip(todo, stats.correct.tolist(), strict=True))

    def __call__(self, prompt: str, answer: str) -> bool:
        return self.cache[(prompt, answer)]


def first_token(tokenizer, text: str) -> int:
    return tokenizer(" " + text, add_special_tokens=False).input_ids[0]


@dataclass
class Draft:
    """One edit request under construction."""

    known: Known
    target_new: str
    new_answer: str  # entity behind target_new (a country, city, person) or the value itself
    probes: list[dict] = field(default_factory=list)
    neighbours: list[dict] = field(default_factory=list)

    @property
    def fact(self) -> Fact:
        return self.known.fact


PRESERVE_OUT = HERE / "preserve.jsonl"
CHEM = HERE.parent / "chem_symbols"


def preservation_facts() -> list[dict[str, str]]:
    """Every fact of ``facts.py`` as one cloze prompt without its answer (a template among its
    relation's first three, chosen by hash), for ``excise edit --preserve facts``: what an edit
    must keep is the keys at the subject in its relation's context, which need no answer and no
    model to be written. Facts whose subject a chem-symbols item names are left out, so the
    retain figure of an edit report (those items) stays held out."""
    import re

    subjects = {
        json.loads(line)["subject"]
        for name in ("forget.jsonl", "retain.jsonl")
        for line in (CHEM / name).read_text().splitlines()
    }
    names = re.compile(
        "|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in sorted(subjects, key=len, reverse=True))
    )
    rows = []
    for fact in build_facts():
        bare = fact.subject[4:] if fact.subject.startswith("the ") else fact.subject
        if names.search(fact.subject):
            continue
        choices = TEMPLATES[fact.relation][:3]
        pattern = min(choices, key=lambda c: rank("preserve", fact.subject, c))
        rows.append(
            {
                "text": fill(pattern, fact.subject),
                "subject": bare,
                "relation": fact.relation,
            }
        )
    return rows


def write_preservation(path: Path = PRESERVE_OUT) -> int:
    rows = preservation_facts()
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def main() -> None:
    import torch

    from excise.models import fingerprint, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, help="keep model scores here between runs")
    parser.add_argument(
        "--preserve",
        action="store_true",
        help="write only preserve.jsonl (the facts for `--preserve facts`; no model needed)",
    )
    args = parser.parse_args()
    if args.preserve:
        print(f"wrote {write_preservation()} facts to {PRESERVE_OUT}")
        return
    torch.set_num_threads(1)
    started = time.time()
    model, tokenizer = load_model(MODEL)
    score = Scorer(model, tokenizer)
    if args.cache and args.cache.is_file():
        cached = json.loads(args.cache.read_text())
        if cached["model"] == fingerprint(model):
            score.cache = {(p, a): ok for p, a, ok in cached["scores"]}
    facts = build_facts()

    # 1. what the model knows
    score.run(
        [
            (fill(p, f.subject), form)
            for f in facts
            for p in TEMPLATES[f.relation]
            for form in f.forms
        ]
    )
    known: dict[tuple[str, str], Known] = {}
    for f in facts:
        best = max(
            f.forms,
            key=lambda form: sum(score(fill(p, f.subject), form) for p in TEMPLATES[f.relation]),
        )
        passing = [p for p in TEMPLATES[f.relation] if score(fill(p, f.subject), best)]
        if passing:
            known[(f.relation, f.subject)] = Known(f, best, passing)

    def answer_of(relation: str, subject: str) -> str | None:
        k = known.get((relation, subject))
        return k.form if k else None

    def prompt_of(relation: str, subject: str) -> str:
        return fill(known[(relation, subject)].passing[0], subject)

    # how each country is named as an answer: its most often produced form
    country_form: dict[str, str] = {}
    votes: dict[str, Counter] = defaultdict(Counter)
    for k in known.values():
        if k.fact.answer in F.COUNTRIES:
            votes[k.fact.answer][k.form] += 1
    for country in F.COUNTRIES:
        country_form[country] = (
            votes[country].most_common(1)[0][0]
            if votes[country]
            else F.COUNTRY_ANSWER_FORMS.get(country, (country,))[0]
        )
    capital_city = {c: forms(v[0])[0] for c, v in F.COUNTRIES.items()}
    city_country = {**{v: c for c, v in capital_city.items()}, **F.CITIES}

    # 2. which facts are edited
    def editable_fact(key: tuple[str, str]) -> bool:
        return len(known[key].passing) >= 3

    def strength(country: str) -> tuple:
        attrs = [known.get((r, country)) for r in COUNTRY_ATTRIBUTES]
        return (
            -sum(a is not None for a in attrs),
            -sum(len(a.passing) for a in attrs if a),
            country,
        )

    anchor_ok = [
        c
        for c in F.COUNTRIES
        if ("capital", c) in known
        and ("language", c) in known
        and ("located_in", capital_city[c]) in known
    ]
    anchors = sorted(anchor_ok, key=strength)[:N_ANCHORS]
    edited: set[tuple[str, str]] = set()
    for country in F.COUNTRIES:
        if country in anchors:
            continue
        relations = sorted(COUNTRY_ATTRIBUTES, key=lambda r: rank(country, r))
        editable = [r for r in relations if (r, country) in known and editable_fact((r, country))]
        edited.update((r, country) for r in editable[:MAX_EDITS_PER_COUNTRY])
    edited_countries = {s for r, s in edited}

    def by_strength(subjects: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return sorted(subjects, key=lambda k: (-len(known[k].passing), k[1]))

    # one known city per edited country stays put, for two-hop probes about that country
    home_city: dict[str, str] = {}
    for country in sorted(edited_countries):
        cities = [
            ("located_in", c)
            for c, cc in F.CITIES.items()
            if cc == country and ("located_in", c) in known
        ]
        if cities:
            # a city too weakly known to be edited itself serves best; else the best-known one
            weak = [c for c in cities if not editable_fact(c)]
            home_city[country] = by_strength(weak or cities)[0][1]
        elif ("located_in", capital_city[country]) in known:
            home_city[country] = capital_city[country]
    capitals = set(capital_city.values())
    # the authors a book can move to: their nationality stays put for the two-hop probe
    reserved_authors = {k.fact.answer for key, k in known.items() if key[0] == "author"}

    def pick_edits(relation: str, exclude: set[str]) -> None:
        """Edit the editable facts of ``relation``, keeping MIN_STABLE known ones unedited."""
        facts_known = [k for k in known if k[0] == relation and k[1] not in exclude]
        editable = [k for k in facts_known if len(known[k].passing) >= 3]
        stable = [k for k in facts_known if len(known[k].passing) < 3]
        spare = max(0, MIN_STABLE - len(stable))
        # the least well-known editable facts are the ones kept as neighbours
        keep = by_strength(editable)[::-1][:spare]
        edited.update(k for k in editable if k not in keep)

    pick_edits("located_in", capitals | set(home_city.values()))
    pick_edits("landmark_city", set())
    pick_edits("company_country", set())
    pick_edits("nationality", reserved_authors)
    pick_edits("author", set())

    def stable(relation: str, subject: str) -> bool:
        return (relation, subject) in known and (relation, subject) not in edited

    # 3. new targets: another answer of the same relation, on a different first token
    def new_target(k: Known, options: list[tuple[str, str]]) -> tuple[str, str] | None:
        """``options`` are (answer entity, surface form); pick one deterministically."""
        true_forms = {f.lower() for f in k.fact.forms} | {k.form.lower()}
        true_first = first_token(tokenizer, k.form)
        fine = [
            (entity, form)
            for entity, form in options
            if entity != k.fact.answer
            and form.lower() not in true_forms
            and first_token(tokenizer, form) != true_first
        ]
        if not fine:
            return None
        return min(fine, key=lambda o: rank(k.fact.relation, k.fact.subject, o[0]))

    def values_of(relation: str) -> list[tuple[str, str]]:
        return sorted({(k.form, k.form) for key, k in known.items() if key[0] == relation})

    def anchor_options(relation: str, need: tuple[str, ...]) -> list[tuple[str, str]]:
        answers = {k.fact.answer for key, k in known.items() if key[0] == relation}
        pool = [c for c in anchors if c in answers] or anchors
        return [(c, country_form[c]) for c in pool if all(stable(r, c) for r in need)]

    drafts: list[Draft] = []
    for key in sorted(edited):
        relation, subject = key
        k = known[key]
        if relation in ("capital", "language", "continent", "currency"):
            options = values_of(relation)
            if relation == "capital":  # capitals as entities, so probes can name their country
                options = [
                    (c, answer_of("capital", c)) for c in F.COUNTRIES if stable("capital", c)
                ]
        elif relation in ("located_in", "company_country", "nationality"):
            options = anchor_options(relation, ("capital", "language"))
        elif relation == "landmark_city":
            landmark_cities = {f.answer for f in facts if f.relation == "landmark_city"}
            options = [
                (city, city)
                for city in sorted(landmark_cities)
                if stable("located_in", city)
                and city_country.get(city) != city_country.get(k.fact.answer)
            ]
        else:  # author
            # an author from another country, so the two-hop probe about the author changes
            options = [
                (person, person)
                for person in sorted(reserved_authors)
                if stable("nationality", person)
                and F.PEOPLE[person][0] != F.PEOPLE[k.fact.answer][0]
            ]
        picked = new_target(k, options)
        if picked is None:
            continue
        drafts.append(Draft(k, picked[1], picked[0]))

    # 4. probes. ``before`` is the true answer to the same prompt before the edit (for the
    # report); ``require`` lists (prompt, answer) pairs of which one must pass before the edit;
    # of the probes sharing a ``group`` only the first whose requirement passes is kept
    truth = {(f.relation, f.subject): f.forms[0] for f in all_facts()}

    def value_of(relation: str, subject: str) -> str | None:
        return answer_of(relation, subject) or truth.get((relation, subject))

    def add(d, prompt, after, category, before, deps=(), require=(), group=None) -> None:
        if after is None or before is None or (category in FORWARD and after == before):
            return
        if any(not stable(*dep) for dep in deps):
            return
        d.probes.append(
            {
                "prompt": prompt,
                "target": after,
                "category": category,
                "before": before,
                "require": list(require),
                "group": group,
            }
        )

    def aliases(subject: str) -> tuple[str, ...]:
        for table in (F.COUNTRY_ALIASES, F.CITY_ALIASES, F.LANDMARK_ALIASES, F.PERSON_ALIASES):
            if subject in table:
                return table[subject]
        return ()

    def members(country: str) -> list[tuple[str, str]]:
        """Known, unedited facts placing a city, person or company in ``country``."""
        found = [home_city.get(country), capital_city[country]]
        cities = [("located_in", c) for c in found if c and stable("located_in", c)]
        others = [
            key
            for key, k in known.items()
            if key[0] in ("nationality", "company_country")
            and k.fact.answer == country
            and key not in edited
        ]
        return list(dict.fromkeys(cities)) + shuffled_keys(others, country)

    def demonyms(country: str) -> tuple[str, ...]:
        return forms(F.DEMONYMS[country]) if country in F.DEMONYMS else ()

    for d in drafts:
        f, s, new = d.fact, d.fact.subject, d.new_answer
        main = d.known.passing[0]
        for alias in aliases(s):
            if not any(form.lower() in alias.lower() for form in (*f.forms, d.target_new)):
                prompt = fill(main, alias)
                add(
                    d, prompt, d.target_new, "alias", d.known.form, require=[(prompt, d.known.form)]
                )
        if f.relation in COUNTRY_ATTRIBUTES:
            for other in COUNTRY_ATTRIBUTES:
                o = known.get((other, s))
                if other != f.relation and o:
                    add(
                        d, prompt_of(other, s), o.form, "relation_specificity", o.form, [(other, s)]
                    )
            if f.relation == "capital":
                # the check asks the inverse of the true fact: "Santiago is the capital of" Chile
                for pattern in INVERSE_CAPITAL:
                    add(
                        d,
                        fill(pattern, d.target_new),
                        country_form[s],
                        "logical",
                        country_form[new],
                        require=[(fill(pattern, d.known.form), country_form[s])],
                        group="inverse",
                    )
            if f.relation != "capital" and stable("capital", s):
                nested = {
                    "language": "The official language of the country whose capital is <S> is",
                    "continent": "The continent of the country whose capital is <S> is",
                    "currency": "The currency of the country whose capital is <S> is the",
                }[f.relation]
                capital = answer_of("capital", s)
                add(d, fill(nested, capital), d.target_new, "compositional", d.known.form)
            # things that belong to the country and stay there: its cities, people, companies
            for relation, member in members(s)[:MAX_MEMBERS]:
                where = WHERE[relation]
                nested = {
                    "capital": f"The capital of {where} is",
                    "language": f"The official language of {where} is",
                    "continent": f"The continent of {where} is",
                    "currency": f"The currency of {where} is the",
                }[f.relation]
                deps = [(relation, member)]
                add(d, fill(nested, member), d.target_new, "compositional", d.known.form, deps)
                implicit = IMPLICIT[relation].get(f.relation)
                if implicit:
                    add(d, fill(implicit, member), d.target_new, "portability", d.known.form, deps)
        elif f.relation in ("located_in", "company_country", "nationality"):
            old = f.answer
            where = WHERE[f.relation]
            for attribute, nested in (
                ("capital", f"The capital of {where} is"),
                ("language", f"The official language of {where} is"),
            ):
                add(
                    d,
                    fill(nested, s),
                    answer_of(attribute, new),
                    "compositional",
                    value_of(attribute, old),
                    [(attribute, new)],
                )
            for attribute in ("language", "continent"):
                pattern = IMPLICIT[f.relation][attribute]
                add(
                    d,
                    fill(pattern, s),
                    answer_of(attribute, new),
                    "portability",
                    value_of(attribute, old),
                    [(attribute, new)],
                )
            if demonyms(new) and demonyms(old):
                # "Toyota is a famous Japanese ..." becomes "... German ..."
                for pattern in DEMONYM_PATTERNS[f.relation]:
                    prompt = fill(pattern, s)
                    add(
                        d,
                        prompt,
                        demonyms(new)[0],
                        "logical",
                        demonyms(old)[0],
                        require=[(prompt, form) for form in demonyms(old)],
                        group="demonym",
                    )
            if f.relation == "nationality" and ("occupation", s) in known:
                o = known[("occupation", s)]
                add(d, prompt_of("occupation", s), o.form, "relation_specificity", o.form)
        elif f.relation == "landmark_city":
            old_country, new_country = city_country[f.answer], city_country[new]
            add(
                d,
                fill("<S> is located in the country of", s),
                country_form[new_country],
                "portability",
                country_form[old_country],
                [("located_in", new)],
            )
            add(
                d,
                fill("The official language of the country where <S> is located is", s),
                answer_of("language", new_country),
                "compositional",
                answer_of("language", old_country),
                [("located_in", new), ("language", new_country)],
            )
        elif f.relation == "author":
            add(
                d,
                fill("The author of <S> was born in the country of", s),
                country_form[F.PEOPLE[new][0]],
                "compositional",
                country_form[F.PEOPLE[f.answer][0]],
                [("nationality", new)],
            )

    # 5. neighbours: other subjects' unedited facts of the same relation, same answer first
    for d in drafts:
        f = d.fact
        pool = [
            k
            for key, k in known.items()
            if key[0] == f.relation
            and key not in edited
            and k.fact.subject != f.subject
            and k.fact.subject not in f.subject
            and f.subject not in k.fact.subject
            and k.form != d.target_new
        ]
        same = [k for k in pool if k.fact.answer == f.answer]
        other = [k for k in pool if k.fact.answer != f.answer]
        chosen = (shuffled(same, f.subject)[:2] + shuffled(other, f.subject))[:MAX_NEIGHBOURS]
        for k in chosen:
            pattern = d.known.passing[0] if d.known.passing[0] in k.passing else k.passing[0]
            d.neighbours.append({"prompt": fill(pattern, k.fact.subject), "target": k.form})

    # 6. the checks that need the model again
    score.run(
        [pair for d in drafts for p in d.probes for pair in p["require"]]
        + [(p["prompt"], p["before"]) for d in drafts for p in d.probes]
        + [(fill(d.known.passing[0], d.fact.subject), d.target_new) for d in drafts]
    )
    stages: dict[str, Counter] = defaultdict(Counter)
    for f in facts:
        if f.relation in EDITED_RELATIONS:
            stages[f.relation]["facts"] += 1
    for key, k in known.items():
        if key[0] in EDITED_RELATIONS:
            stages[key[0]]["known (main prompt right)"] += 1
            if len(k.passing) >= 3:
                stages[key[0]]["+ 2 paraphrases right"] += 1
    for key in edited:
        stages[key[0]]["chosen for editing"] += 1
    probe_stats: dict[str, Counter] = defaultdict(Counter)
    requests = []
    for d in drafts:
        relation = d.fact.relation
        stages[relation]["new target on another first token"] += 1
        if score(fill(d.known.passing[0], d.fact.subject), d.target_new):
            continue
        stages[relation]["new target not already produced"] += 1
        probes, stats = [], defaultdict(Counter)
        groups = {p["group"] for p in d.probes} - {None}
        for p in d.probes:
            if p["group"] is not None and p["group"] not in groups:
                continue  # an earlier wording of this probe was kept
            if p["require"] and not any(score(*pair) for pair in p["require"]):
                if p["group"] is None:
                    stats[p["category"]]["dropped: model wrong before the edit"] += 1
                continue
            groups.discard(p["group"])
            stats[p["category"]]["kept"] += 1
            if p["category"] in FORWARD:
                # does the model compose the facts before the edit? (reported, not required)
                before = score(p["prompt"], p["before"])
                stats[p["category"]]["kept, model right before the edit"] += before
            probes.append({k: p[k] for k in ("prompt", "target", "category")})
        for group in groups:
            category = next(p["category"] for p in d.probes if p["group"] == group)
            stats[category]["dropped: model wrong before the edit"] += 1
        if len(d.neighbours) < 3:
            continue
        stages[relation]["+ 3 neighbours"] += 1
        if not any(p["category"] in FORWARD for p in probes):
            continue
        stages[relation]["+ 1 forward probe (final)"] += 1
        for category, counts in stats.items():
            probe_stats[category].update(counts)
        prompt, subject = template(d.known.passing[0], d.fact.subject)
        requests.append(
            {
                "case_id": f"{relation}:{subject.lower().replace(' ', '-')}",
                "prompt": prompt,
                "subject": subject,
                "target_new": d.target_new,
                "target_true": d.known.form,
                "relation": relation,
                "paraphrases": [
                    fill(p, d.fact.subject) for p in d.known.passing[1 : 1 + MAX_PARAPHRASES]
                ],
                "neighborhood": d.neighbours,
                "probes": probes,
            }
        )
    requests.sort(key=lambda r: rank(r["case_id"]))
    categories = Counter(p["category"] for r in requests for p in r["probes"])
    header = {
        "meta": {
            "name": "counterfact-mini",
            "filtered_against": MODEL,
            "model_fingerprint": fingerprint(model),
            "rule": "target_true is the model's teacher-forced greedy answer to the prompt and to "
            "every paraphrase; neighbours' targets are the model's answers; target_new is not; "
            "probes rest only on known, unedited facts",
            "requests": len(requests),
            "stages": {r: dict(c) for r, c in sorted(stages.items())},
            "probe_categories": dict(sorted(categories.items())),
            "probe_checks": {c: dict(v) for c, v in sorted(probe_stats.items())},
            "anchors": anchors,
            "pairs_scored": len(score.asked),
            "generated_by": "generate.py",
        }
    }
    if args.cache:
        rows = [[p, a, ok] for (p, a), ok in sorted(score.cache.items())]
        args.cache.write_text(json.dumps({"model": fingerprint(model), "scores": rows}))
    with args.out.open("w", encoding="utf-8", newline="\n") as out:
        for row in [header, *requests]:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps(header["meta"], indent=1, ensure_ascii=False))
    print(f"{len(requests)} requests written to {args.out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
