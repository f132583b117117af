"""AI judges (pure: no Ray): a rubric rendered into the judge's question (rubric), what a judge
answered and how it is read (verdicts), a crash-safe cache of verdicts (cache), an
OpenAI-compatible endpoint with retries (endpoint), the forms a judge gives (forms), and its
calibration against people, biases and cost (calibration). The local judge's log-probs are read
by alignray.feedback.rlaif, on the Ray Data pool of actors/ai_labeller.py."""
