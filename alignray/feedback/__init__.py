"""Human (and AI, and simulated) feedback: one schema, validation, aggregation into
reward-model training tables, annotator quality, reports and simulated annotators.

Import from the module that holds a name (this package re-exports nothing: its reports pull
in matplotlib, its quality statistics scipy and pandas, and every PPO actor that only needs
an AI judge's verdicts would pay for them at start)::

    from alignray.feedback.schema import read_feedback        # one schema, validated reads
    from alignray.feedback.quality import annotator_quality, annotator_weights
    from alignray.feedback.aggregate import build_training_tables
    from alignray.feedback.report import write_feedback_report

    feedback, validation = read_feedback("feedback.parquet", strict=False)
    quality = annotator_quality(feedback)
    tables = build_training_tables(feedback, annotator_weights(quality, "exclude"))
    write_feedback_report("out/feedback", feedback, quality, tables, validation)

The rest: ``elo`` (Elo and Bradley-Terry), ``groups`` (annotator groups), ``heldout``,
``simulated`` (simulated annotators), ``rlaif`` and ``ai_judge`` (AI feedback), ``ai_share``,
``sampling``.
"""
