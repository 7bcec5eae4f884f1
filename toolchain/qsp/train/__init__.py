"""qsp.train: the ``qsp-train`` pipeline (config, data, models, resumable loop, methods, bundle).

``from qsp.train import TrainConfig, run``; ``run(TrainConfig(task="digits", epochs=5))``
trains, exports ``OUT/bundle`` and returns a :class:`~qsp.train.pipeline.RunReport`.
"""
from .config import TrainConfig
from .methods import METHODS, TrainingMethod, register_method


def run(cfg, explicit=None, echo=print):
    from .pipeline import run as _run

    return _run(cfg, explicit, echo)


__all__ = ["TrainConfig", "run", "TrainingMethod", "register_method", "METHODS"]
