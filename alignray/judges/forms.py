"""The forms a judge gives, through the verdict cache: pairwise (both orders, the position bias
cancelled), ratings on the rubric's scale with its flaws, and thumbs (a rating above the
scale's middle is up, below is down, the middle gives none).

A judge here is a function ``ask(questions, on_answer) -> answers``: ``questions`` are
``(prompt, first, second)`` for a pair in one order or ``(prompt, reply)`` for a rating; each
answer is handed to ``on_answer`` as it arrives, which stores it in the cache. Only the
questions the cache lacks are asked. Counts always add up: in = judged + unparsed + failed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from alignray.judges.cache import VerdictCache, verdict_key
from alignray.judges.rubric import Rubric
from alignray.judges.verdicts import FAILED, JUDGED, UNPARSED, Answer, expected_rating, pair_verdict

Ask = Callable[[list[tuple[str, ...]], Callable[[int, Answer], None]], list[Answer]]


@dataclass
class Judging:
    """What a judge gave for a list of items: one verdict per item, the counts and the cost."""
    verdicts: list[dict]
    counts: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)


def ask_cached(ask: Ask, questions: list[tuple[str, ...]], keys: list[str],
               cache: VerdictCache | None) -> tuple[list[Answer], int]:
    """Every question's answer, the cache's where it has one; and how many it had."""
    answers = [cache.get(key) if cache is not None else None for key in keys]
    missing = [i for i, answer in enumerate(answers) if answer is None]

    def store(j: int, answer: Answer) -> None:
        if cache is not None:
            cache.put(keys[missing[j]], answer)

    if missing:
        for i, answer in zip(missing, ask([questions[i] for i in missing], store), strict=True):
            answers[i] = answer
    return answers, len(questions) - len(missing)


def counts_of(verdicts: Sequence[dict], cache_hits: int) -> dict:
    statuses = Counter(v["status"] for v in verdicts)
    failed = Counter(v["reason"] for v in verdicts if v["status"] == FAILED)
    return {"in": len(verdicts), JUDGED: statuses[JUDGED], UNPARSED: statuses[UNPARSED], FAILED: statuses[FAILED],
            "failed_by_reason": dict(failed), "answers_from_cache": cache_hits}


def failed_answers(answers: Sequence[Answer]) -> dict:
    return dict(Counter(a.reason for a in answers if a.status == FAILED))


def cost_of(answers: Sequence[Answer], labels: int, prices: tuple[float | None, float | None] = (None, None),
            wall_s: float | None = None) -> dict:
    """Seconds, tokens and (with prices per million tokens) money, in all and per label."""
    tokens_in, tokens_out = sum(a.tokens_in for a in answers), sum(a.tokens_out for a in answers)
    cost = {"request_seconds": round(sum(a.seconds for a in answers), 2), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "labels": labels}
    if wall_s is not None:
        cost["wall_seconds"] = round(wall_s, 2)
    per = max(labels, 1)
    cost["seconds_per_label"] = round((wall_s if wall_s is not None else cost["request_seconds"]) / per, 4)
    cost["tokens_per_label"] = round((tokens_in + tokens_out) / per, 1)
    if prices[0] is not None or prices[1] is not None:
        money = tokens_in * (prices[0] or 0.0) / 1e6 + tokens_out * (prices[1] or 0.0) / 1e6
        cost |= {"money": round(money, 6), "money_per_label": round(money / per, 8)}
    return cost


def judge_pairs(ask: Ask, identity: dict, rubric: Rubric, items: Sequence[tuple[str, str, str]],
                cache: VerdictCache | None = None) -> tuple[Judging, list[Answer]]:
    """Each ``(prompt, a, b)`` judged in both orders; a pair is judged when both orders are.
    Returns the judging and the answers of the orders asked now (for their cost)."""
    questions = [q for p, a, b in items for q in ((p, a, b), (p, b, a))]
    keys = [verdict_key(judge=identity, rubric=rubric.digest, form="pairwise", question=list(q)) for q in questions]
    answers, hits = ask_cached(ask, questions, keys, cache)
    verdicts = [pair_verdict(answers[2 * i], answers[2 * i + 1]) for i in range(len(items))]
    # a pair fails with its first order that failed; the reasons of every order are counted too
    counts = counts_of(verdicts, hits) | {"answers_failed_by_reason": failed_answers(answers)}
    return Judging(verdicts, counts), answers


def rating_verdict(answer: Answer, rubric: Rubric) -> dict:
    if answer.status != JUDGED:
        return {"status": answer.status, "reason": answer.reason}
    score = expected_rating(answer, rubric.rating_labels)
    middle = sum(rubric.scale) / 2
    return {"status": JUDGED, "score": score, "flaws": list(answer.flaws),
            "thumb": "up" if score > middle else "down" if score < middle else None}


def judge_ratings(ask: Ask, identity: dict, rubric: Rubric, items: Sequence[tuple[str, str]],
                  cache: VerdictCache | None = None) -> tuple[Judging, list[Answer]]:
    """Each ``(prompt, reply)`` rated on the rubric's scale (score, flaws, thumb)."""
    keys = [verdict_key(judge=identity, rubric=rubric.digest, form="rating", question=list(q)) for q in items]
    answers, hits = ask_cached(ask, list(items), keys, cache)
    verdicts = [rating_verdict(answer, rubric) for answer in answers]
    return Judging(verdicts, counts_of(verdicts, hits)), answers


def endpoint_asker(endpoint, rubric: Rubric, form: str) -> Ask:
    """An OpenAI-compatible judge (alignray.judges.endpoint) asked the rubric's ``form`` question."""
    def ask(questions, on_answer):
        if form == "pairwise":
            texts = [rubric.pairwise_question(*q) for q in questions]
            labels, flaws = ("A", "B"), ()
        else:
            texts = [rubric.rating_question(*q) for q in questions]
            labels, flaws = rubric.rating_labels, rubric.flaws
        instruction = rubric.instruction(form)
        return endpoint.ask([f"{text}\n\n{instruction}" for text in texts], labels, flaws, on_answer)
    return ask
