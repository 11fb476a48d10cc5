"""Stands in for pycosat on the lent GPU machine only (device.sh puts this folder on the path where the real module,
a C extension with no Python 3.12 wheel, is missing): reasoning-gym imports it for its logic-puzzle tasks, which the
GPU check's arms never generate. Any use fails and names why."""


def __getattr__(name: str):
    raise RuntimeError(
        f"pycosat.{name}: pycosat is not installed on this machine (scripts/gpu_check/absent stands in for it so "
        "reasoning-gym imports); the logic-puzzle tasks that use it cannot run here"
    )
