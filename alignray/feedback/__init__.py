"""Human (and AI, and simulated) feedback: one schema, validation, aggregation into
reward-model training tables, annotator quality, reports and simulated annotators.

Typical use::

    feedback, validation = read_feedback("feedback.parquet", strict=False)
    quality = annotator_quality(feedback)
    tables = build_training_tables(feedback, annotator_weights(quality, "exclude"))
    write_feedback_report("out/feedback", feedback, quality, tables, validation)
"""
from alignray.feedback.aggregate import (DEFAULT_FLAW_WEIGHTS, PAIRS_SCHEMA, POINTWISE_SCHEMA, TrainingTables,
                                         build_training_tables, elo_targets, normalized_ratings,
                                         pointwise_targets, preference_pairs, ranking_pairs,
                                         rating_quality_scores)
from alignray.feedback.elo import bradley_terry_fit, bradley_terry_to_elo_scale, elo_ratings
from alignray.feedback.quality import AnnotatorQuality, annotator_quality, annotator_weights, krippendorff_alpha
from alignray.feedback.report import elo_vs_bradley_terry, write_feedback_report
from alignray.feedback.schema import (DEFAULT_FLAWS, FEEDBACK_SCHEMA, KINDS, SOURCES, feedback_row_checks,
                                      feedback_table, pairwise_feedback, ranking_feedback, rating_feedback,
                                      read_feedback, thumbs_feedback, validate_feedback, write_feedback)

__all__ = [
    "DEFAULT_FLAWS", "DEFAULT_FLAW_WEIGHTS", "FEEDBACK_SCHEMA", "KINDS", "PAIRS_SCHEMA", "POINTWISE_SCHEMA",
    "SOURCES", "AnnotatorQuality", "TrainingTables", "annotator_quality", "annotator_weights",
    "bradley_terry_fit", "bradley_terry_to_elo_scale", "build_training_tables", "elo_ratings", "elo_targets",
    "elo_vs_bradley_terry", "feedback_row_checks", "feedback_table", "krippendorff_alpha", "normalized_ratings",
    "pairwise_feedback", "pointwise_targets", "preference_pairs", "ranking_feedback", "ranking_pairs",
    "rating_feedback", "rating_quality_scores", "read_feedback", "thumbs_feedback", "validate_feedback",
    "write_feedback", "write_feedback_report",
]
