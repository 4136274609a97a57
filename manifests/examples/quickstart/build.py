"""Build the quickstart bundle: synthetic corpora, two quizzes, a tokenizer and a small pretrained base model.

Everything here is generated from the templates below with fixed seeds, so the repository can ship it (no
third-party text or weights) and anyone can rebuild it: `.venv/bin/python -P manifests/examples/quickstart/build.py`
(about two minutes on 2 CPU cores). It writes, next to this file:

- `general/stories.jsonl.gz` (replay) and `general/heldout.jsonl` (general perplexity): simple stories, the base
  model's own distribution; the base model is pretrained on a third sample of them that is not shipped;
- `domain/science.jsonl.gz`: textbook-like sections stating facts (SI units, chemical symbols, organs, planets);
- `tasks/`: two lm-eval multiple-choice tasks, `science_quiz` (the domain facts: the base model is at chance)
  and `story_quiz` (story phrases against science-word distractors: what forgetting erodes);
- `model/`: a byte-level BPE tokenizer (1024 tokens) and a 4-layer Llama (~0.3M parameters).
"""

from __future__ import annotations

import gzip
import json
import math
import random
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261203


def _words(text: str) -> list[str]:
    return text.split()


NAMES = _words("Lily Tom Mia Ben Sue Max Anna Sam Lucy Jack Emma Leo Zoe Tim Ella Finn Rosa Dan Kim Joe")
KINDS = _words("girl boy dog cat bird bunny bear duck frog mouse puppy kitten fox pig lamb")
PLACES = _words("park garden forest house yard pond beach farm meadow kitchen")
OBJECTS = _words("ball kite box hat cake toy boat flower book drum")
COLORS = _words("red blue green yellow pink purple little big shiny soft")
PLAYS = _words("play run jump sing dance swim draw read climb paint")
FEELINGS = _words("happy sad proud scared excited sleepy surprised glad")
FAMILY = _words("mom dad grandma grandpa sister brother")

UNITS = [
    ("force", "newton"),
    ("energy", "joule"),
    ("power", "watt"),
    ("pressure", "pascal"),
    ("electric charge", "coulomb"),
    ("electric current", "ampere"),
    ("voltage", "volt"),
    ("resistance", "ohm"),
    ("frequency", "hertz"),
    ("temperature", "kelvin"),
    ("mass", "kilogram"),
    ("length", "meter"),
]
SYMBOLS = [
    ("hydrogen", "H"),
    ("helium", "He"),
    ("carbon", "C"),
    ("nitrogen", "N"),
    ("oxygen", "O"),
    ("sodium", "Na"),
    ("iron", "Fe"),
    ("gold", "Au"),
    ("silver", "Ag"),
    ("copper", "Cu"),
    ("potassium", "K"),
    ("calcium", "Ca"),
]
ORGANS = [
    ("heart", "pumps blood"),
    ("lungs", "exchange gases"),
    ("kidneys", "filter blood"),
    ("stomach", "digests food"),
    ("brain", "processes signals"),
    ("skin", "protects the body"),
]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
SCIENCE_FILLER = [
    "Scientists test a hypothesis with careful measurements.",
    "A good experiment changes one variable at a time.",
    "Measurements are recorded with their units and uncertainty.",
    "The results of an experiment must be reproducible.",
    "A model explains observations and predicts new ones.",
    "Energy is conserved in an isolated system.",
    "Matter is made of atoms, which contain protons, neutrons and electrons.",
    "A chemical reaction rearranges atoms into new substances.",
    "Cells are the basic units of living organisms.",
    "Gravity pulls every mass toward every other mass.",
    "Data tables and graphs help reveal patterns.",
    "Each quantity in physics has a standard unit.",
]
STORY_QUIZ_DISTRACTORS = _words("electron molecule voltage nucleus orbit enzyme circuit isotope")


def story(rng: random.Random) -> str:
    name, friend = rng.sample(NAMES, 2)
    kind, place, place2 = rng.choice(KINDS), rng.choice(PLACES), rng.choice(PLACES)
    thing, color, play, play2 = rng.choice(OBJECTS), rng.choice(COLORS), rng.choice(PLAYS), rng.choice(PLAYS)
    feeling, family = rng.choice(FEELINGS), rng.choice(FAMILY)
    middle = [
        f"One day, {name} found a {color} {thing} near the {place2}.",
        f"{name} felt very {feeling}.",
        f'{name} asked {friend}, "Can we {play2} together?"',
        f'{friend} said, "Yes! Let us {play2} in the {place2}."',
        f"The {thing} made {name} smile.",
        f"They liked to {play2} with the {color} {thing}.",
    ]
    rng.shuffle(middle)
    lines = [
        f"Once upon a time, there was a little {kind} named {name}.",
        f"{name} loved to {play} in the {place}.",
        *middle[: rng.randint(3, 6)],
        f"At the end of the day, {name} went home and hugged {rng.choice(['her', 'his'])} {family}.",
        rng.choice(["The end.", "They had a lot of fun.", f"{name} was {feeling} and went to sleep."]),
    ]
    return "\n".join(lines)


# Per topic: the facts, and the sentences that state one ({0} and {1}: the fact's two parts).
FACTS = {
    "units": (
        UNITS,
        [
            "The SI unit of {0} is the {1}.",
            "In the SI system, {0} is measured in the unit called the {1}.",
            "We express {0} in units of {1}.",
        ],
    ),
    "elements": (
        SYMBOLS,
        [
            "The chemical symbol for {0} is {1}.",
            "On the periodic table, {0} has the symbol {1}.",
            "The element {0} is written with the symbol {1}.",
        ],
    ),
    "organs": (ORGANS, ["The {0} {1}.", "In the human body, the {0} {1}."]),
    "planets": (
        list(zip(PLANETS, ORDINALS, strict=True)),
        ["{0} is the {1} planet from the Sun.", "Counting from the Sun, the {1} planet is {0}."],
    ),
}


def _fact_sentence(rng: random.Random, topic: str) -> str:
    facts, templates = FACTS[topic]
    fact = rng.choice(facts)
    return rng.choice(templates).format(*fact)


def section(rng: random.Random, number: int) -> str:
    topic = rng.choice(["units", "elements", "organs", "planets"])
    title = {"units": "Units", "elements": "Elements", "organs": "Organs", "planets": "The Solar System"}[topic]
    lines = [f"Section {number}: {title}"]
    for _ in range(rng.randint(5, 9)):
        lines.append(_fact_sentence(rng, topic) if rng.random() < 0.7 else rng.choice(SCIENCE_FILLER))
    return "\n".join(dict.fromkeys(lines))  # no repeated line inside a section


def science_quiz(rng: random.Random) -> list[dict]:
    items = []
    for quantity, unit in UNITS:
        wrong = rng.sample([u for _, u in UNITS if u != unit], 3)
        items.append((f"The SI unit of {quantity} is the", unit, wrong))
    for element, symbol in SYMBOLS:
        wrong = rng.sample([s for _, s in SYMBOLS if s != symbol], 3)
        items.append((f"The chemical symbol for {element} is", symbol, wrong))
    for index, planet in enumerate(PLANETS):
        wrong = rng.sample([p for p in PLANETS if p != planet], 3)
        items.append((f"The {ORDINALS[index]} planet from the Sun is", planet, wrong))
    return [_choice_row(rng, i, *item) for i, item in enumerate(items)]


def story_quiz(rng: random.Random) -> list[dict]:
    items = []
    for kind in KINDS:
        items.append(("Once upon a time, there was a little", kind))
    for place in PLACES:
        items.append((f"{rng.choice(NAMES)} loved to play in the", place))
    for family in FAMILY:
        items.append((f"At the end of the day, {rng.choice(NAMES)} went home and hugged her", family))
    rows = []
    for i, (prompt, answer) in enumerate(items):
        rows.append(_choice_row(rng, i, prompt, answer, rng.sample(STORY_QUIZ_DISTRACTORS, 3)))
    return rows


def _choice_row(rng: random.Random, index: int, prompt: str, answer: str, wrong: list[str]) -> dict:
    choices = [answer, *wrong]
    rng.shuffle(choices)
    return {"id": index, "prompt": prompt, "choices": choices, "label": choices.index(answer)}


TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: __DATA__/{name}/validation.jsonl
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """JSON lines; gzip-compressed (with no timestamp, so a rebuild is byte-identical) for a .gz name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def build_tokenizer(texts: list[str], target: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(target / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    (target / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 512}, indent=1) + "\n")


def pretrain(texts: list[str], target: Path, steps: int = 1500, seq: int = 128, batch: int = 16) -> None:
    """A small Llama trained from scratch on the stories (plain PyTorch, cosine schedule)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    stream: list[int] = []
    for text in texts:
        stream += [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
    rows = torch.tensor(stream[: len(stream) // seq * seq]).view(-1, seq)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for step in range(steps):
        ids = rows[torch.randint(len(rows), (batch,), generator=generator)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 250 == 0 or step == steps - 1:
            print(f"pretrain step {step}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
    model.save_pretrained(str(target), safe_serialization=True)


DATA_FILES = (
    "general/stories.jsonl.gz",
    "general/heldout.jsonl",
    "domain/science.jsonl.gz",
    "tasks/science_quiz.yaml",
    "tasks/science_quiz/validation.jsonl",
    "tasks/story_quiz.yaml",
    "tasks/story_quiz/validation.jsonl",
)


def write_data(target: Path) -> list[str]:
    """Write the corpora and the quizzes (DATA_FILES) under target; returns the pretraining stories."""
    rng = random.Random(SEED)
    stories = [story(rng) for _ in range(18300)]
    pretraining, replay, heldout = stories[:16000], stories[16000:18000], stories[18000:]
    sections = [section(rng, i + 1) for i in range(3000)]
    write_jsonl(target / "general" / "stories.jsonl.gz", [{"text": t} for t in replay])
    write_jsonl(target / "general" / "heldout.jsonl", [{"text": t} for t in heldout])
    write_jsonl(target / "domain" / "science.jsonl.gz", [{"text": t} for t in sections])
    tasks = target / "tasks"
    for name, rows in (("science_quiz", science_quiz(rng)), ("story_quiz", story_quiz(rng))):
        write_jsonl(tasks / name / "validation.jsonl", rows)
        (tasks / f"{name}.yaml").write_text(TASK_YAML.format(name=name))
    return pretraining


def main() -> None:
    pretraining = write_data(HERE)
    model = HERE / "model"
    shutil.rmtree(model, ignore_errors=True)
    build_tokenizer(pretraining, model)
    pretrain(pretraining, model)


if __name__ == "__main__":
    main()
