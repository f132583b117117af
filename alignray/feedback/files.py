"""The files a feedback phase writes into its folder; the reward-model phase reads them."""
FEEDBACK_FILE = "feedback.parquet"  # every accepted feedback row (FEEDBACK_SCHEMA)
PAIRS_FILE = "pairs.parquet"  # preference pairs for training (PAIRS_SCHEMA)
POINTWISE_FILE = "pointwise.parquet"  # pointwise targets for training (POINTWISE_SCHEMA)
HELDOUT_FEEDBACK_FILE = "heldout_feedback.parquet"  # held-out prompts, judged by both panels
HELDOUT_PAIRS_FILE = "heldout_pairs.parquet"  # the same, one row per pair with each panel's vote share
