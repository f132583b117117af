"""Constraint rule sets from YAML: the kinds of rule, the named sets in conf/constraints/,
and errors for an unknown rule kind or rule set (never silently no rules)."""
import pytest

from alignray.ppo import ConstraintPenalty
from alignray.ppo.constraints import TWEET_CONSTRAINTS_EXAMPLE, load_rule_set


def test_length_and_repetition_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("length: {min_words: 3, max_words: 6, cost: 1.0}\n"
                    "repetition: {ngram: 2, max_repeats: 2, cost: 0.5}\n")
    penalty = ConstraintPenalty.from_rule_set(str(path))
    texts = ["too short", "a fine answer of five", "one two three four five six seven",
             "go on go on go on", "go on go on and stop"]
    costs, violations = penalty.penalties(texts)
    assert violations["length"].tolist() == [True, False, True, False, False]
    assert violations["repetition"].tolist() == [False, False, False, True, False]
    assert costs.tolist() == [1.0, 0.0, 1.0, 0.5, 0.0]


def test_named_rule_sets_and_none():
    assert load_rule_set("tweets") == TWEET_CONSTRAINTS_EXAMPLE
    assert ConstraintPenalty.from_rule_set("none").rules == []
    chat = ConstraintPenalty.from_rule_set("chat")
    _, violations = chat.penalties(["Sure, here is how.\nHuman: thanks",
                                    "You can boil the water first, then add salt."])
    assert violations["writes_user_turn"].tolist() == [True, False]
    assert {"length", "repetition", "degenerate"} <= {rule.name for rule in chat.rules}


def test_unknown_rule_kind_is_an_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("banned_phrase: [{phrase: x, cost: 1.0}]\n")
    with pytest.raises(ValueError, match=r"unknown constraint keys \['banned_phrase'\]"):
        ConstraintPenalty.from_rule_set(str(path))


def test_unknown_rule_set_is_an_error_not_silently_no_rules():
    with pytest.raises(ValueError, match=r"rule set 'twets' not found.*'chat', 'tweets'"):
        ConstraintPenalty.from_rule_set("twets")
