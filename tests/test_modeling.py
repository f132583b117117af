"""The one position-limit check every phase runs before a model would read past its positions."""
from __future__ import annotations

import pytest
from transformers import GPT2Config, LlamaConfig

from alignray.models.modeling import check_position_limit, position_limit


def test_position_limit_reads_either_config_key_from_a_model_a_config_or_a_folder(tmp_path):
    gpt2, llama = GPT2Config(n_positions=64), LlamaConfig(max_position_embeddings=128)
    assert position_limit(gpt2) == 64 and position_limit(llama) == 128

    class Model:
        config = llama

    assert position_limit(Model()) == 128
    gpt2.save_pretrained(tmp_path)
    assert position_limit(tmp_path) == position_limit(str(tmp_path)) == 64


def test_check_refuses_one_position_too_many_and_names_what_asked_for_them(tmp_path):
    config = GPT2Config(n_positions=64)
    check_position_limit(config, 64, "prompt + response")
    with pytest.raises(ValueError, match=r"prompt \+ response = 65 positions exceed the model's 64"):
        check_position_limit(config, 65, "prompt + response")
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        check_position_limit(tmp_path, 65, "prompt + response")
