"""A small labelled knowledge graph with planted structure, for the "Your own graph" walk-through.

`kge data example --out DIR` writes DIR/train.tsv, valid.tsv and test.tsv (head <TAB> relation <TAB>
tail, string labels, no header), the files a user would bring. The world (deterministic, numpy):

- countries (``Country_007``), cities (``City_0123``), companies (``Company_045``), people (``Person_01234``);
- ``located_in`` city -> country (N-to-1); ``borders`` country <-> country (symmetric, both directions);
- ``born_in`` and ``lives_in`` person -> city (lives_in: the birth city, or a city of the same country);
- ``citizen_of`` person -> country (mostly the country of the birth city: a composition);
- ``headquartered_in`` company -> city; ``works_for`` person -> company (mostly one based in the
  person's country); ``knows`` person <-> person (symmetric, mostly within one city);
- ``parent_of`` / ``child_of`` (inverse pairs).

Triples are shuffled and split 80 / 10 / 10; a valid or test triple whose head or tail never occurs
in training moves to training (so the example has no cold entities; the importer documents them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kge.common.atomic import save_text


def example_triples(seed: int = 0, people: int = 2000) -> list[tuple[str, str, str]]:
    """Every (head, relation, tail) label triple of the example world, deduplicated and sorted."""
    rng = np.random.default_rng(seed)
    n_countries, n_cities, n_companies = 24, max(40, people // 12), max(20, people // 20)
    country = [f"Country_{i:03d}" for i in range(n_countries)]
    city = [f"City_{i:04d}" for i in range(n_cities)]
    company = [f"Company_{i:03d}" for i in range(n_companies)]
    person = [f"Person_{i:05d}" for i in range(people)]
    triples = set()
    city_country = rng.integers(0, n_countries, n_cities)
    for c, k in enumerate(city_country):
        triples.add((city[c], "located_in", country[k]))
    for a in range(n_countries):  # a ring plus a few random borders, symmetric
        for b in {(a + 1) % n_countries, int(rng.integers(0, n_countries))} - {a}:
            triples.add((country[a], "borders", country[b]))
            triples.add((country[b], "borders", country[a]))
    hq = rng.integers(0, n_cities, n_companies)
    for m, c in enumerate(hq):
        triples.add((company[m], "headquartered_in", city[c]))
    # Popular cities are born in more often (Zipf-like weights).
    weight = 1.0 / np.arange(1, n_cities + 1) ** 0.8
    birth = rng.choice(n_cities, size=people, p=weight / weight.sum())
    for p in range(people):
        b = birth[p]
        triples.add((person[p], "born_in", city[b]))
        same_country = np.flatnonzero(city_country == city_country[b])
        home = b if rng.random() < 0.6 else int(rng.choice(same_country))
        triples.add((person[p], "lives_in", city[home]))
        citizen = city_country[b] if rng.random() < 0.9 else int(rng.integers(0, n_countries))
        triples.add((person[p], "citizen_of", country[citizen]))
        local = np.flatnonzero(city_country[hq] == city_country[home])
        employer = int(rng.choice(local)) if len(local) and rng.random() < 0.8 else int(rng.integers(0, n_companies))
        triples.add((person[p], "works_for", company[employer]))
    homes = np.array([city.index(t) for h, r, t in sorted(triples) if r == "lives_in"])
    for p in range(people):
        neighbours = np.flatnonzero(homes == homes[p])
        for _ in range(int(rng.integers(1, 4))):
            q = int(rng.choice(neighbours)) if rng.random() < 0.8 else int(rng.integers(0, people))
            if q != p:
                triples.add((person[p], "knows", person[q]))
                triples.add((person[q], "knows", person[p]))
        if p >= 50 and rng.random() < 0.5:  # parents among the older (lower-numbered) people
            parent = int(rng.integers(0, p))
            triples.add((person[parent], "parent_of", person[p]))
            triples.add((person[p], "child_of", person[parent]))
    return sorted(triples)


def write_example(out: str | os.PathLike, seed: int = 0, people: int = 2000) -> dict[str, Path]:
    """Write the example's train / valid / test TSV files under ``out``; returns their paths."""
    triples = example_triples(seed, people)
    order = np.random.default_rng(seed + 1).permutation(len(triples))
    n_eval = len(triples) // 10
    valid, test, train = order[:n_eval], order[n_eval : 2 * n_eval], order[2 * n_eval :]
    train_entities = {x for i in train for x in (triples[i][0], triples[i][2])}
    moved = {
        int(i)
        for i in np.concatenate([valid, test])
        if triples[i][0] not in train_entities or triples[i][2] not in train_entities
    }
    train = [int(i) for i in train] + sorted(moved)
    valid = [int(i) for i in valid if int(i) not in moved]
    test = [int(i) for i in test if int(i) not in moved]
    out = Path(out)
    paths = {}
    for name, index in (("train", train), ("valid", valid), ("test", test)):
        paths[name] = out / f"{name}.tsv"
        save_text(paths[name], "".join("\t".join(triples[i]) + "\n" for i in sorted(index)))
    return paths
