"""The official FFGo sampling schedule as a diffusers scheduler.

FFGo's inference scripts sample with Wan's own flow UniPC solver (VideoX-Fun ``FlowUniPCMultistepScheduler``),
whose sigmas are ``linspace(0.999, 0, n + 1)[:-1]`` shifted by ``shift·σ / (1 + (shift − 1)·σ)``. diffusers'
``UniPCMultistepScheduler(use_flow_sigmas=True)`` starts from ``linspace(1, 0.001, n + 1)[:-1]`` instead: up to
0.0043 apart in σ at shift 5 and 50 steps. The diffusers Wan pipelines call ``set_timesteps(n)`` without
sigmas, so the official schedule has to come from the scheduler itself.

This module imports diffusers at the top on purpose: when a pipeline holding :class:`FFGoUniPCScheduler` is
saved, diffusers' loader finds the class here and looks up its base classes in this module.
"""
from __future__ import annotations

import numpy as np
from diffusers import SchedulerMixin, UniPCMultistepScheduler  # noqa: F401  (SchedulerMixin: see above)

SIGMA_SCHEDULES = ("official", "diffusers")


def official_flow_sigmas(num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Wan's unshifted sampling sigmas: from ``1 - 1/num_train_timesteps`` (0.999) down, the 0 end dropped."""
    return np.linspace(1 - 1 / num_train_timesteps, 0, num_inference_steps + 1)[:-1]


class FFGoUniPCScheduler(UniPCMultistepScheduler):
    """diffusers' UniPC on flow sigmas, with the official Wan/VideoX-Fun sigma grid as its default schedule.

    Everything else (solver, order, shift from ``flow_shift``, final sigma 0, int64 timesteps) is diffusers'
    own; explicit ``sigmas`` still win. Use ``ffstudy.models.ffgo_scheduler(sigma_schedule="diffusers")`` for
    diffusers' default grid.
    """

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None):
        if sigmas is None and num_inference_steps is not None:
            if not self.config.use_flow_sigmas or self.config.use_dynamic_shifting:
                raise ValueError("FFGoUniPCScheduler needs use_flow_sigmas=True and use_dynamic_shifting=False "
                                 "(the official schedule is a fixed shift of flow sigmas)")
            sigmas = official_flow_sigmas(num_inference_steps, self.config.num_train_timesteps)
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
