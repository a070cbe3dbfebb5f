"""A model's variables beyond its parameters (BatchNorm's ``batch_stats``), carried beside them.

Training keeps these collections in ``TrainState.model_state`` (empty for models without
any): the step applies the model with them mutable, so BatchNorm normalises with the
batch's statistics and updates its running averages; evaluation and inference read them
and BatchNorm normalises with the running averages. Models tell the two apart the Flax
way, ``use_running_average=not self.is_mutable_collection("batch_stats")``.
"""

from __future__ import annotations

from typing import Any

NOT_STATE = ("params", "cache", "intermediates", "perturbations")
"""Collections that are not model state: parameters, the decoding KV cache, sown values, and the
adversarial perturbations of the embedding outputs (jaxlm/train/adversarial.py)."""


def split_variables(variables: dict) -> tuple[Any, dict]:
    """``model.init``'s variables -> ``(params, model_state)``."""
    return variables["params"], {k: v for k, v in variables.items() if k not in NOT_STATE}


class StatefulModel:
    """A model bound to its non-parameter collections; ``apply({"params": p}, ...)`` adds them.

    Tasks apply this object exactly as a Flax module, so the Task protocol does not change.
    With ``train=True`` the collections are mutable and, after each ``apply``, ``state``
    holds their updated values (the step returns them from inside the traced loss); with
    ``train=False`` they are read-only. With no collections it is the plain module.
    """

    def __init__(self, module, state: dict, train: bool = False):
        self.module, self.state, self.train = module, state, train

    def apply(self, variables: dict, *args, **kwargs):
        if not self.state:
            return self.module.apply(variables, *args, **kwargs)
        variables = {**self.state, **variables}
        if not self.train:
            return self.module.apply(variables, *args, **kwargs)
        out, self.state = self.module.apply(variables, *args, mutable=list(self.state), **kwargs)
        return out

    def __getattr__(self, name):  # config, dtype, ... of the module
        return getattr(self.module, name)
