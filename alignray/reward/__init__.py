"""The reward model, from training to serving (pure: no Ray).

model       the loader every consumer uses, the text format, scoring and normalisation
losses      Bradley-Terry and pointwise losses on scalar rewards
training    the rows, model builder, collate function and loss of the Ray Train loop
evaluation  accuracy against annotator panels and calibration
client      the HTTP client of the reward endpoint (standard library only)

Nothing is re-exported here, so importing the client does not import torch.
"""
