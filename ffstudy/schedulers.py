"""The official FFGo sampling schedule on diffusers' own UniPC scheduler.

FFGo's inference scripts sample with Wan's own flow UniPC solver (VideoX-Fun ``FlowUniPCMultistepScheduler``),
whose sigmas are ``linspace(0.999, 0, n + 1)[:-1]`` shifted by ``shift·σ / (1 + (shift − 1)·σ)``. diffusers'
``UniPCMultistepScheduler(use_flow_sigmas=True)`` starts from ``linspace(1, 0.001, n + 1)[:-1]`` instead: up to
0.0043 apart in σ at shift 5 and 50 steps. The diffusers Wan pipelines call ``set_timesteps(n)`` without
sigmas, so the official schedule has to come from the scheduler itself.

:func:`use_official_sigmas` gives one ``UniPCMultistepScheduler`` *instance* a ``set_timesteps`` that supplies
the official sigmas. Its class, config and module stay diffusers' own, so a pipeline holding it saves a standard
diffusers folder (``scheduler_config.json`` says ``UniPCMultistepScheduler``, ``model_index.json`` says
``diffusers``) that plain ``WanImageToVideoPipeline.from_pretrained`` loads; such a load samples diffusers'
default grid, and ``ffstudy.models.load_pipeline`` puts the official one back.
"""
from __future__ import annotations

import types

import numpy as np
from diffusers import UniPCMultistepScheduler

SIGMA_SCHEDULES = ("official", "diffusers")


def official_flow_sigmas(num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Wan's unshifted sampling sigmas: from ``1 - 1/num_train_timesteps`` (0.999) down, the 0 end dropped."""
    return np.linspace(1 - 1 / num_train_timesteps, 0, num_inference_steps + 1)[:-1]


def _check_flow_config(scheduler) -> None:
    if not scheduler.config.use_flow_sigmas or scheduler.config.use_dynamic_shifting:
        raise ValueError("the official FFGo schedule needs use_flow_sigmas=True and use_dynamic_shifting=False "
                         "(it is a fixed shift of flow sigmas)")


def _official_set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None):
    """UniPC's ``set_timesteps`` with the official sigmas when none are given (explicit ``sigmas`` still win)."""
    if sigmas is None and num_inference_steps is not None:
        _check_flow_config(self)
        sigmas = official_flow_sigmas(num_inference_steps, self.config.num_train_timesteps)
    UniPCMultistepScheduler.set_timesteps(self, num_inference_steps, device=device, sigmas=sigmas, mu=mu)


def use_official_sigmas(scheduler: UniPCMultistepScheduler) -> UniPCMultistepScheduler:
    """Make ``scheduler`` (a ``UniPCMultistepScheduler`` on flow sigmas) sample the official Wan/VideoX-Fun sigma
    grid by default; returns it. Everything else (solver, order, shift from ``flow_shift``, final sigma 0, int64
    timesteps, the saved config) is diffusers' own. ``copy.deepcopy`` keeps the schedule; ``from_config``,
    ``save_pretrained``/``from_pretrained`` and pickling give diffusers' default grid back."""
    if not isinstance(scheduler, UniPCMultistepScheduler):
        raise TypeError(f"use_official_sigmas needs a UniPCMultistepScheduler, not {type(scheduler).__name__}")
    _check_flow_config(scheduler)
    scheduler.set_timesteps = types.MethodType(_official_set_timesteps, scheduler)
    return scheduler


def has_official_sigmas(scheduler) -> bool:
    """Whether ``scheduler`` samples the official grid (:func:`use_official_sigmas` was applied to it)."""
    return getattr(getattr(scheduler, "set_timesteps", None), "__func__", None) is _official_set_timesteps

