"""A rubric (a constitution): what the judge is asked, rendered from a YAML file the user can
copy and edit (alignray/judges/rubrics/ holds the shipped ones; their comments name the fields).

A rubric renders two questions: ``pairwise`` (which of two replies is better, answered A or B)
and ``rating`` (a digit on the rubric's scale, with flaws from its vocabulary). A local judge
reads its next token after the ``*_answer`` prefix; an endpoint judge gets the question with the
``*_instruction`` appended. ``digest`` hashes the whole file's content: it is part of every
cached verdict's key, so an edited rubric never returns a verdict of the old one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignray.feedback.schema import DEFAULT_FLAWS

SHIPPED = Path(__file__).resolve().parent / "rubrics"
PAIR_LABELS = ("A", "B")
FIELDS = ("pairwise", "pairwise_answer", "pairwise_instruction", "rating", "rating_answer", "rating_instruction",
          "scale", "flaws")


@dataclass(frozen=True)
class Rubric:
    name: str
    pairwise: str
    pairwise_answer: str
    pairwise_instruction: str
    rating: str
    rating_answer: str
    rating_instruction: str
    scale: tuple[int, int]
    flaws: tuple[str, ...]
    digest: str

    @property
    def rating_labels(self) -> tuple[str, ...]:
        """The digits of the scale: each one token, read or parsed as the rating."""
        return tuple(str(n) for n in range(self.scale[0], self.scale[1] + 1))

    def pairwise_question(self, prompt: str, reply_a: str, reply_b: str) -> str:
        return self.pairwise.format(prompt=prompt, reply_a=reply_a, reply_b=reply_b)

    def rating_question(self, prompt: str, reply: str) -> str:
        return self.rating.format(prompt=prompt, reply=reply, scale_min=self.scale[0], scale_max=self.scale[1],
                                  flaws=", ".join(self.flaws))

    def instruction(self, form: str) -> str:
        text = self.pairwise_instruction if form == "pairwise" else self.rating_instruction
        return text.format(scale_min=self.scale[0], scale_max=self.scale[1], flaws=", ".join(self.flaws))


def rubric_file(name_or_path: str) -> Path:
    """A shipped rubric's file by name, or the file at a path."""
    shipped = SHIPPED / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        names = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
        raise FileNotFoundError(f"rubric {name_or_path!r} is neither a shipped rubric ({', '.join(names)}) "
                                "nor a file")
    return path


def load_rubric(name_or_path: str) -> Rubric:
    """The rubric, checked: every field present, a scale of single digits, known flaws."""
    path = rubric_file(name_or_path)
    text = path.read_text()
    fields = yaml.safe_load(text) or {}
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise ValueError(f"rubric {path} lacks {missing}")
    low, high = (int(v) for v in fields["scale"])
    if not 0 <= low < high <= 9:
        raise ValueError(f"rubric {path}: scale {fields['scale']} must be single digits, low < high")
    unknown = sorted(set(fields["flaws"]) - set(DEFAULT_FLAWS))
    if unknown:
        raise ValueError(f"rubric {path}: unknown flaws {unknown}; known: {list(DEFAULT_FLAWS)}")
    rubric = Rubric(name=path.stem, **{f: str(fields[f]) for f in FIELDS[:6]}, scale=(low, high),
                    flaws=tuple(fields["flaws"]), digest=hashlib.sha256(text.encode()).hexdigest()[:16])
    rubric.pairwise_question("", "", "")  # a field in braces the rubric does not know fails here, not mid-run
    rubric.rating_question("", "")
    rubric.instruction("rating")
    return rubric
