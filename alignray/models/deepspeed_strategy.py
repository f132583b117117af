"""The DeepSpeed strategy every trainable model goes through: one process of a
data-parallel world builds an engine, steps it, checkpoints it and exports its weights in
Hugging Face format.

The same code runs on a GPU (NCCL, bf16 when supported) and on CPU (gloo, fp32). On CPU
nothing may JIT-compile a C++ op (that takes minutes): the optimizer is a plain
``torch.optim.AdamW`` handed to ``deepspeed.initialize`` (DeepSpeed's own Adam is a compiled
op), and DeepSpeed's shared-memory all-reduce op, which its torch backend otherwise builds
the moment a process group is set up on a Linux CPU, is switched off in
:func:`_keep_comm_ops_uncompiled`.

How a process joins the world:
- under Ray Train, ``torch.distributed`` is already initialised: :func:`init_distributed_if_needed`
  reuses it;
- a group of plain Ray actors: rank 0 picks ``(node address, free_port())``, and every actor
  calls :func:`init_distributed` with its rank;
- a lone process (a test, a notebook): :func:`init_distributed_if_needed` makes a world of one.

No Ray import here: the Ray side (who is rank 0, where the address comes from) belongs to
the caller.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

# The accelerator is chosen once, when deepspeed is first imported; without this DeepSpeed
# guesses, and on a CPU machine may pick a backend that needs oneCCL.
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

import deepspeed  # noqa: E402
import deepspeed.ops  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

from alignray.config.training import DeepSpeedConfig  # noqa: E402
from alignray.core.model_card import default_card, write_model_card  # noqa: E402
from alignray.models import lora  # noqa: E402
from alignray.models.modeling import training_dtype  # noqa: E402

# Name under which DeepSpeed's op registry knows its shared-memory collective op.
SHARED_MEMORY_COMM_OP = "deepspeed_shm_comm"
LATEST_TAG_FILE = "latest"  # written by DeepSpeed next to its checkpoint folders
# DeepSpeed returns its own bookkeeping mixed with the client state: ours lives under one key.
CLIENT_STATE_KEY = "alignray_client_state"


# ----------------------------------------------------------------------------- joining a world
def _keep_comm_ops_uncompiled() -> None:
    """DeepSpeed's torch backend builds its shared-memory all-reduce (a C++ op, compiled
    on first use) whenever the op registry calls it compatible, which it does on any Linux
    CPU. Marking it incompatible makes the backend fall back to plain torch.distributed
    collectives. Must run before the backend is created, in every process."""
    deepspeed.ops.__compatible_ops__[SHARED_MEMORY_COMM_OP] = False


def communication_backend() -> str:
    """NCCL on GPUs, gloo on CPU (oneCCL is never installed here)."""
    return "nccl" if get_accelerator().device_name() == "cuda" else "gloo"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on this host right now, for rank 0 of a new world to listen on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int,
                     local_rank: int = 0) -> None:
    """Join (or, as rank 0, open) a world of ``world_size`` processes.

    For plain actors that each hold one GPU, ``local_rank`` is 0: every actor sees only its
    own device. Every process of the world must call this with the same address and port.
    """
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    _keep_comm_ops_uncompiled()
    deepspeed.init_distributed(dist_backend=communication_backend(), auto_mpi_discovery=False,
                               verbose=False)


def init_distributed_if_needed() -> None:
    """Reuse the world someone already set up (Ray Train does, and sets RANK, LOCAL_RANK...);
    otherwise start a world of one on this host."""
    if torch.distributed.is_initialized():
        _keep_comm_ops_uncompiled()
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(),
                                   auto_mpi_discovery=False, verbose=False)
        return
    init_distributed(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port())


def world_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


# ----------------------------------------------------------------------------- the engine
def deepspeed_config_dict(ds_cfg: DeepSpeedConfig, micro_batch_size: int, grad_accum: int,
                          device: torch.device) -> dict[str, Any]:
    """The DeepSpeed JSON config for this process's world."""
    dtype = training_dtype(ds_cfg.precision, device)
    stage = int(ds_cfg.zero_stage)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {stage}")
    zero: dict[str, Any] = {"stage": stage}
    if ds_cfg.offload_optimizer:
        if stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs zero_stage 1, 2 or 3")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device.type == "cuda"}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size(),
        "gradient_clipping": ds_cfg.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        # A torch optimizer with ZeRO-Offload is allowed (slower than DeepSpeed's CPU Adam,
        # but nothing to compile); see _make_optimizer for when DeepSpeed's is used.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # our own progress line reports the loss
        "wall_clock_breakdown": False,
    }


def _make_optimizer(model: torch.nn.Module, ds_cfg: DeepSpeedConfig, lr: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not on biases, norms or other vectors).

    With ZeRO-Offload on a GPU machine DeepSpeed's CPU Adam (compiled once there) is several
    times faster than torch's; on a GPU otherwise torch's fused AdamW (one kernel for all
    parameters); on CPU a plain torch AdamW, so nothing compiles.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": ds_cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if ds_cfg.offload_optimizer and device.type == "cuda":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=lr, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


def warmup_then_linear_decay(warmup_steps: int, total_steps: int):
    """Learning-rate factor per optimizer step: linear warm-up from ~0 to 1 over
    ``warmup_steps``, then linear decay to 0 at ``total_steps`` (constant if it is 0)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps <= 0:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def build_engine(model: torch.nn.Module, ds_cfg: DeepSpeedConfig, *, lr: float,
                 total_steps: int, warmup_steps: int, micro_batch_size: int,
                 grad_accum: int = 1) -> deepspeed.DeepSpeedEngine:
    """Wrap ``model`` in a DeepSpeed engine (ZeRO stage, offload, precision and clipping
    from ``ds_cfg``) with AdamW and a warm-up/linear-decay schedule.

    Joins a world first if there is none. Train with ``engine(**batch)``,
    ``engine.backward(loss)``, ``engine.step()`` (or :func:`backward_and_step`).
    """
    if ds_cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    if ds_cfg.zero_stage == 3 and any(lora.is_lora(m) for m in model.modules()):
        # the adapter is small: sharding it gains nothing, and the exports read whole weights
        raise ValueError("LoRA trains with deepspeed.zero_stage 0-2, not 3")
    init_distributed_if_needed()
    device = torch.device(get_accelerator().device_name())
    config = deepspeed_config_dict(ds_cfg, micro_batch_size, grad_accum, device)
    optimizer = _make_optimizer(model, ds_cfg, lr, device)
    schedule = warmup_then_linear_decay(warmup_steps, total_steps)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    return engine


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Turn on the Hugging Face model's own gradient checkpointing (``model`` itself, or the
    backbone a wrapper such as the value model holds)."""
    from transformers import PreTrainedModel
    backbone = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if backbone is None or not backbone.supports_gradient_checkpointing:
        raise ValueError(f"{type(model).__name__} has no Hugging Face backbone with gradient checkpointing")
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def backward_and_step(engine: deepspeed.DeepSpeedEngine, loss: torch.Tensor) -> float | None:
    """One micro-step; returns the gradient norm (before clipping) when the optimizer
    stepped and DeepSpeed measured it, else None."""
    engine.backward(loss)
    engine.step()
    if not engine.is_gradient_accumulation_boundary():
        return None
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def current_lr(engine: deepspeed.DeepSpeedEngine) -> float:
    return float(engine.get_lr()[0])


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(engine: deepspeed.DeepSpeedEngine, ckpt_dir: str | os.PathLike,
                    client_state: dict | None = None) -> Path:
    """Save everything training needs to continue exactly: weights, optimizer and
    learning-rate schedule (DeepSpeed; each rank writes its own ZeRO shards), the step
    count, ``client_state`` (yours: data position, epoch...), and each rank's random
    number generator state (so dropout draws the same masks after a resume).

    Collective: every rank calls it, each with a folder of its own or a shared one.
    Returns the folder of this checkpoint's tag.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = f"global_step{engine.global_steps}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag,
                           client_state={CLIENT_STATE_KEY: dict(client_state or {})})
    tag_dir = ckpt_dir / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), tag_dir / f"rng_rank{world_rank()}.pt")
    return tag_dir


def load_checkpoint(engine: deepspeed.DeepSpeedEngine,
                    ckpt_dir: str | os.PathLike) -> dict | None:
    """Restore what :func:`save_checkpoint` saved (the tag named in ``latest``) and return
    the client state, or None when the folder holds no checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    latest = ckpt_dir / LATEST_TAG_FILE
    if not latest.exists():
        return None
    tag = latest.read_text().strip()
    load_path, saved = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag!r} from {ckpt_dir}")
    rng_file = ckpt_dir / tag / f"rng_rank{world_rank()}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return saved[CLIENT_STATE_KEY]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- export
def gathered_state_dict(engine: deepspeed.DeepSpeedEngine) -> dict[str, torch.Tensor] | None:
    """The full weights on CPU on rank 0 (None elsewhere). Under ZeRO-3 each parameter is
    gathered from its shards one at a time, so no rank ever holds two full copies of the
    model. Collective: every rank calls it."""
    module = engine.module
    on_rank_0 = world_rank() == 0
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        # A no-op for parameters that are not partitioned (ZeRO 0-2).
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if on_rank_0:
                state[name] = param.detach().to("cpu", copy=True)
    if not on_rank_0:
        return None
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().to("cpu", copy=True)
    return state


def export_hf(engine: deepspeed.DeepSpeedEngine, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write the engine's model as a Hugging Face folder (safetensors, config, tokenizer, a
    model card naming where it started) that ``from_pretrained`` loads; a LoRA model also
    writes its adapter (``alignray.models.lora.save_adapter_and_merged``). Rank 0 writes;
    every rank must call it."""
    out = Path(out_dir)
    if lora.is_lora(engine.module):  # the merged model and the adapter (ZeRO 0-2: whole weights on every rank)
        if world_rank() == 0:
            lora.save_adapter_and_merged(engine.module, tokenizer, out)
        if world_size() > 1:
            torch.distributed.barrier()
        return out
    state = gathered_state_dict(engine)
    if state is not None:
        out.mkdir(parents=True, exist_ok=True)
        engine.module.save_pretrained(out, state_dict=state)
        tokenizer.save_pretrained(out)
        write_model_card(out, default_card(engine.module))
    if world_size() > 1:
        torch.distributed.barrier()
    return out
