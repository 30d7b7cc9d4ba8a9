"""Task metrics: known answers (SQuAD-style F1, ROUGE-L by hand) and the metric choice."""

from __future__ import annotations

import pytest

from securefed.evaluation import metrics as m


def test_exact_match_is_strict_about_the_code_but_not_about_framing():
    assert m.exact_match(" J45.909\n", "J45.909") == 1.0
    assert m.exact_match("j45.909.", "J45.909") == 1.0  # case and a trailing full stop
    assert m.exact_match("J45.90", "J45.909") == 0.0
    assert m.exact_match("The code is J45.909", "J45.909") == 0.0
    assert m.exact_match("J45.909\nbecause asthma", "J45.909") == 1.0  # judged on the first line


def test_category_is_the_first_three_characters():
    assert m.category_match("J45.20", "J45.909") == 1.0
    assert m.category_match("J44.9", "J45.909") == 0.0
    assert m.prefix1_match("J44.9", "J45.909") == 1.0 and m.prefix1_match("I10", "J45.909") == 0.0


def test_token_f1_and_rouge_l_known_answers():
    # pred tokens: the cat sat ; ref: the cat sat on the mat -> common 3, P = 1, R = 1/2 -> F1 = 2/3
    assert m.token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS("a b c d e", "a c e x") = 3 -> P = 3/5, R = 3/4 -> F = 2PR/(P+R) = 2/3
    assert m.rouge_l("a b c d e", "a c e x") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    # order matters for ROUGE-L, not for F1
    assert m.token_f1("c b a", "a b c") == 1.0 and m.rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert m.token_f1("", "x") == 0.0 and m.rouge_l("x", "y") == 0.0


def test_metric_choice_and_means():
    assert m.choose_metric(["J45.909", "I10"], False) == "exact_match"
    assert m.choose_metric(["a longer answer"], True) == "choice_accuracy"
    assert m.choose_metric(["a longer answer"], False) == "rouge_l"
    assert m.choose_metric(["x"], False, "token_f1") == "token_f1"
    with pytest.raises(ValueError):
        m.choose_metric(["x"], False, "bleu")
    s = m.score_generations(["J45.909", "J45.0", "nonsense"], ["J45.909", "J45.909", "I10"])
    assert s["exact_match"] == pytest.approx(1 / 3) and s["category_match"] == pytest.approx(2 / 3)
    assert s["prefix1_match"] == pytest.approx(2 / 3)
    assert "category_match" not in m.score_generations(["a b"], ["a b c"])
