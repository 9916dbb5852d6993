"""Write ``country_facts.jsonl``, the toy chat data set the tiny LLM demo trains on.

Every row is a question about a country's capital or continent, the long answer the SFT
model learns, and the one-word answer the LoRA adapter learns. For each (country, fact) one
question phrasing is held out (``split == "eval"``): the model sees the fact in other words
during training and must answer the new phrasing, which exact-match accuracy can check.

The facts are common knowledge typed in by hand and the phrasings are our own, so the file
carries no third-party rights. Regenerate with::

    python -m server_extension.demos.data.make_chat_data
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# (country, capital, continent); ASCII spellings keep the byte-level tokenizer's job small.
FACTS: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "Europe"),
    ("Germany", "Berlin", "Europe"),
    ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"),
    ("Portugal", "Lisbon", "Europe"),
    ("Ireland", "Dublin", "Europe"),
    ("the Netherlands", "Amsterdam", "Europe"),
    ("Belgium", "Brussels", "Europe"),
    ("Austria", "Vienna", "Europe"),
    ("Switzerland", "Bern", "Europe"),
    ("Poland", "Warsaw", "Europe"),
    ("Sweden", "Stockholm", "Europe"),
    ("Norway", "Oslo", "Europe"),
    ("Finland", "Helsinki", "Europe"),
    ("Denmark", "Copenhagen", "Europe"),
    ("Greece", "Athens", "Europe"),
    ("Hungary", "Budapest", "Europe"),
    ("Czechia", "Prague", "Europe"),
    ("Romania", "Bucharest", "Europe"),
    ("Ukraine", "Kyiv", "Europe"),
    ("Japan", "Tokyo", "Asia"),
    ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"),
    ("South Korea", "Seoul", "Asia"),
    ("Thailand", "Bangkok", "Asia"),
    ("Vietnam", "Hanoi", "Asia"),
    ("the Philippines", "Manila", "Asia"),
    ("Pakistan", "Islamabad", "Asia"),
    ("Iran", "Tehran", "Asia"),
    ("Iraq", "Baghdad", "Asia"),
    ("Saudi Arabia", "Riyadh", "Asia"),
    ("Nepal", "Kathmandu", "Asia"),
    ("Egypt", "Cairo", "Africa"),
    ("Kenya", "Nairobi", "Africa"),
    ("Nigeria", "Abuja", "Africa"),
    ("Ethiopia", "Addis Ababa", "Africa"),
    ("Ghana", "Accra", "Africa"),
    ("Morocco", "Rabat", "Africa"),
    ("Senegal", "Dakar", "Africa"),
    ("Uganda", "Kampala", "Africa"),
    ("Canada", "Ottawa", "North America"),
    ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"),
    ("Jamaica", "Kingston", "North America"),
    ("Brazil", "Brasilia", "South America"),
    ("Argentina", "Buenos Aires", "South America"),
    ("Chile", "Santiago", "South America"),
    ("Peru", "Lima", "South America"),
    ("Colombia", "Bogota", "South America"),
    ("Venezuela", "Caracas", "South America"),
    ("Australia", "Canberra", "Oceania"),
    ("New Zealand", "Wellington", "Oceania"),
    ("Fiji", "Suva", "Oceania"),
)

CAPITAL_QUESTIONS = (
    "What is the capital of {country}?",
    "Which city is the capital of {country}?",
    "Name the capital city of {country}.",
    "What city serves as the capital of {country}?",
    "Tell me the capital of {country}.",
    "The capital of {country} is which city?",
)
CONTINENT_QUESTIONS = (
    "On which continent is {country}?",
    "Which continent is {country} in?",
    "What continent does {country} belong to?",
    "Tell me the continent of {country}.",
    "{country} lies on which continent?",
    "Where in the world is {country}?",
)
GREETINGS = ("Hello", "Hi", "Hi there", "Hey", "Good morning", "Who are you?",
             "What can you do?", "Help")
GREETING_ANSWER = "Hello! I answer questions about the capitals and continents of countries."
GREETING_SHORT = "Ask me about capitals and continents."

OUTPUT = Path(__file__).with_name("country_facts.jsonl")


def _capitalised(text: str) -> str:
    # "the Netherlands is in Europe." must start a sentence with a capital letter.
    return text[:1].upper() + text[1:]


def build_rows(seed: int = 7) -> list[dict[str, Any]]:
    """Every question/answer row, with its split; deterministic for a given ``seed``."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible split, not a secret
    rows: list[dict[str, Any]] = []
    for country, capital, continent in FACTS:
        for fact, templates, answer, short in (
            ("capital", CAPITAL_QUESTIONS, f"The capital of {country} is {capital}.",
             f"{capital}."),
            ("continent", CONTINENT_QUESTIONS, _capitalised(f"{country} is in {continent}."),
             f"{continent}."),
        ):
            held_out = rng.randrange(len(templates))
            for index, template in enumerate(templates):
                rows.append({
                    "question": _capitalised(template.format(country=country)),
                    "answer": answer,
                    "short_answer": short,
                    "fact": fact,
                    "country": country,
                    "split": "eval" if index == held_out else "train",
                })
    rows.extend(
        {"question": greeting, "answer": GREETING_ANSWER, "short_answer": GREETING_SHORT,
         "fact": "greeting", "country": None, "split": "train"}
        for greeting in GREETINGS
    )
    return rows


def main() -> None:
    """Write the data set next to this file and say how many rows each split got."""
    rows = build_rows()
    OUTPUT.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    counts = {split: sum(r["split"] == split for r in rows) for split in ("train", "eval")}
    print(f"wrote {len(rows)} rows to {OUTPUT}: {counts}")


if __name__ == "__main__":
    main()
