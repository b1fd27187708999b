"""Write ``lens_memory/data/counterfact_heldout.json``: a held-out fact set in CounterFact format.

The facts are public knowledge (Wikidata relations: P17 country of a city, P30 continent of a city,
P38 currency of a country, P127 owner of a company or brand, P178 developer of a product, P286/P115
home city of a sports team), written independently of the built-in tables
(``lens_memory/data/fact_tables.json``) and with no subject in common with them. Each record has what
CounterFact has: a requested rewrite (prompt with ``{}``, subject, true and new object -- the new
object is another object of the same relation), two paraphrase prompts, neighbourhood prompts (other
subjects with the same true object), attribute prompts (subjects that truly have the new object) and
generation prompts. The file is used to test that settings chosen on the built-in dev split carry
over to facts nobody tuned on; ``lens-memory edit --facts heldout`` loads it.

Usage: ``python analyses/make_heldout_facts.py`` (deterministic; rewrites the file).
"""

from __future__ import annotations

import json
from pathlib import Path

from lens_memory.facts import builtin_facts

OUT = Path(__file__).resolve().parents[1] / "lens_memory" / "data" / "counterfact_heldout.json"

RELATIONS = [
    ("P17", "{} is a city in the country of",
     ["{} is a city located in", "The city of {} lies in the country of"],
     ["{} is known for"], {
         "Brazil": ["São Paulo", "Rio de Janeiro", "Brasília", "Salvador", "Recife", "Fortaleza"],
         "India": ["Mumbai", "Delhi", "Bangalore", "Chennai", "Kolkata", "Hyderabad"],
         "Canada": ["Toronto", "Vancouver", "Montreal", "Calgary", "Ottawa", "Edmonton"],
         "Australia": ["Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "Canberra"],
         "Mexico": ["Guadalajara", "Monterrey", "Tijuana", "Cancún", "Puebla", "Acapulco"],
         "Russia": ["Moscow", "Saint Petersburg", "Novosibirsk", "Kazan", "Yekaterinburg", "Vladivostok"],
     }),
    ("P30", "{} is a city on the continent of",
     ["The city of {} is on the continent of", "{} is located on the continent of"],
     ["The people of {} are"], {
         "Africa": ["Nairobi", "Lagos", "Johannesburg", "Casablanca", "Accra", "Addis Ababa"],
         "Asia": ["Bangkok", "Jakarta", "Manila", "Hanoi", "Seoul", "Kathmandu"],
         "Europe": ["Vienna", "Prague", "Budapest", "Warsaw", "Stockholm", "Lisbon"],
         "South America": ["Lima", "Bogotá", "Santiago", "Caracas", "Quito", "Montevideo"],
     }),
    ("P38", "The currency of {} is the",
     ["In {}, people pay with the", "The official currency used in {} is the"],
     ["The economy of {} is"], {
         "euro": ["Portugal", "Belgium", "Austria", "Greece", "Finland", "Ireland"],
         "dollar": ["Canada", "Australia", "New Zealand", "Singapore", "Jamaica", "Zimbabwe"],
         "peso": ["Argentina", "Chile", "Colombia", "the Philippines", "Uruguay", "Cuba"],
         "pound": ["the United Kingdom", "Egypt", "Lebanon", "Sudan", "Syria", "South Sudan"],
     }),
    ("P127", "{} is owned by",
     ["{} is a subsidiary of", "The company that owns {} is"],
     ["{} is"], {
         "Google": ["YouTube", "Android", "Waymo", "DeepMind", "Fitbit", "Nest"],
         "Microsoft": ["LinkedIn", "GitHub", "Skype", "Mojang", "Hotmail", "Bing"],
         "Disney": ["Pixar", "Marvel Studios", "Lucasfilm", "ESPN", "ABC", "Hulu"],
         "Amazon": ["Twitch", "Audible", "Whole Foods", "Zappos", "IMDb", "Ring"],
         "Facebook": ["Instagram", "WhatsApp", "Oculus", "Messenger", "Threads", "Giphy"],
     }),
    ("P178", "{} was developed by",
     ["{} is a product developed by", "The company behind {} is"],
     ["{} is used to"], {
         "Microsoft": ["Windows", "Excel", "PowerPoint", "Xbox", "Visual Studio", "Outlook"],
         "Apple": ["macOS", "iOS", "Safari", "iTunes", "Final Cut Pro", "Siri"],
         "Adobe": ["Photoshop", "Illustrator", "InDesign", "Acrobat", "Premiere Pro", "Lightroom"],
         "Sony": ["PlayStation", "Walkman", "Bravia", "Cyber-shot", "Xperia", "Vaio"],
     }),
    ("P115", "The {} are a sports team based in",
     ["The home city of the {} is", "The {} play their home games in"],
     ["The {} won"], {
         "Chicago": ["Chicago Bulls", "Chicago Cubs", "Chicago Bears", "Chicago Blackhawks", "Chicago White Sox",
                     "Chicago Fire"],
         "Boston": ["Boston Celtics", "Boston Red Sox", "Boston Bruins", "New England Patriots", "New England Revolution",
                    "Boston Cannons"],
         "Los Angeles": ["Los Angeles Lakers", "Los Angeles Dodgers", "Los Angeles Clippers", "Los Angeles Rams",
                         "Los Angeles Kings", "LA Galaxy"],
         "New York": ["New York Yankees", "New York Knicks", "New York Mets", "New York Giants", "New York Rangers",
                      "Brooklyn Nets"],
     }),
]


def records() -> list[dict]:
    taken = {f.subject.lower() for f in builtin_facts()}
    out: list[dict] = []
    for rel, template, paraphrases, generation, objects in RELATIONS:
        names = list(objects)
        for oi, obj in enumerate(names):
            new = names[(oi + 1) % len(names)]
            subjects = [s for s in objects[obj] if s.lower() not in taken]
            for si, subj in enumerate(subjects):
                others = [subjects[(si + k) % len(subjects)] for k in range(1, len(subjects))]
                out.append({
                    "case_id": len(out),
                    "requested_rewrite": {"prompt": template, "subject": subj, "relation_id": rel,
                                          "target_true": {"str": obj}, "target_new": {"str": new}},
                    "paraphrase_prompts": [p.format(subj) for p in paraphrases],
                    "neighborhood_prompts": [template.format(o) for o in others],
                    "attribute_prompts": [template.format(o) for o in objects[new][:5]],
                    "generation_prompts": [g.format(subj) for g in generation],
                })
    return out


def main() -> None:
    recs = records()
    OUT.write_text(json.dumps(recs, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(recs)} records over {len(RELATIONS)} relations to {OUT}")
    print(json.dumps({"records": len(recs), "relations": len(RELATIONS)}))


if __name__ == "__main__":
    main()
