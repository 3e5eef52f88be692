"""Build core/engine/evaluate/tasks/sb_wiki_next.jsonl: the true next sentence of a passage.

Passages come from the held-out (evaluation) part of the offline Wikipedia text; the three wrong
choices are sentences of similar length from other articles.  Run once; the output is committed.

    .venv/bin/python scripts/build_wiki_task.py
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.engine.data import load_text  # noqa: E402

ITEMS = 120
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences_by_article(text: str) -> list[list[str]]:
    articles = re.split(r"(?m)^ = .+ = $", text)
    result = []
    for article in articles:
        prose = [line for line in article.splitlines()
                 if len(line) > 120 and not line.startswith(("*", "=", "|", "{"))]
        sents = [s.strip() for line in prose for s in SENTENCE.split(line)]
        sents = [s for s in sents if 40 <= len(s) <= 220]
        if len(sents) > 4:
            result.append(sents)
    return result


def main() -> None:
    rng = random.Random(1234)
    articles = sentences_by_article(load_text("wiki-offline", "evaluation"))
    items: list[dict] = []
    used: set[tuple[int, int]] = set()
    while len(items) < ITEMS:
        a = rng.randrange(len(articles))
        sents = articles[a]
        i = rng.randrange(len(sents) - 1)
        if (a, i) in used:
            continue
        used.add((a, i))
        context, answer = sents[i], sents[i + 1]
        wrong = []
        while len(wrong) < 3:
            b = rng.randrange(len(articles))
            if b == a:
                continue
            candidate = rng.choice(articles[b])
            if abs(len(candidate) - len(answer)) < 60 and candidate not in wrong:
                wrong.append(candidate)
        choices = [answer, *wrong]
        rng.shuffle(choices)
        items.append({"id": len(items), "context": context, "choices": choices,
                      "label": choices.index(answer)})
    out = ROOT / "core" / "engine" / "evaluate" / "tasks" / "sb_wiki_next.jsonl"
    out.write_text("".join(json.dumps(item) + "\n" for item in items))
    print(f"wrote {len(items)} items from {len(articles)} articles to {out}")


if __name__ == "__main__":
    main()
