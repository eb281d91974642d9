"""The document corpus both storage emulators serve, generated at first start."""

from __future__ import annotations

import random
from pathlib import Path

#: The fleets ask for the first 50; the rest are for tests that need documents no gateway cache
#: can hold, whatever ran before them.
DOCUMENTS = 60
WORDS = (
    "cloud",
    "watcher",
    "quarterly",
    "report",
    "budget",
    "invoice",
    "contract",
    "meeting",
    "summary",
    "action",
    "items",
    "risk",
    "review",
    "customer",
    "revenue",
    "roadmap",
)


def document_name(i: int) -> str:
    return f"doc-{i:03d}.txt"


def ensure_corpus(corpus_dir: Path, documents: int = DOCUMENTS) -> None:
    corpus_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)  # the same corpus on every machine
    for i in range(documents):
        path = corpus_dir / document_name(i)
        if not path.exists():
            words = [rng.choice(WORDS) for _ in range(rng.randint(50, 400))]
            path.write_text(f"Document {i}\n\n" + " ".join(words) + "\n")
