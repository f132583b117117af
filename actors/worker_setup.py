"""What Ray runs in every worker process of an alignray job before any actor or task code
(the runtime env's ``worker_process_setup_hook``). Standard library only: every worker pays
for this module's imports."""
import sys

HOOK = "alignray.actors.worker_setup.set_up_worker"  # Ray reads a dotted path


def set_up_worker() -> None:
    """Workers never track experiments (the driver holds the tracker), yet ``import deepspeed``
    imports mlflow whenever it is installed (its autotuner's optional import): ~1.1 s of CPU in
    every training actor and Ray Train worker. Marked absent here, DeepSpeed skips it."""
    sys.modules.setdefault("mlflow", None)
