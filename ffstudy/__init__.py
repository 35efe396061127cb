"""ffstudy: reproduce, explain and extend FFGo ("First Frame Is the Place to Go for Video Content Customization")."""
from .compose import Box, Composite, Entity, compose_first_frame
from .generate import TRIGGER, WAN_NEGATIVE_PROMPT, FFGoVideo, generate, with_trigger
from .models import ModelNotAvailableError, list_backbones, load_pipeline

__version__ = "0.1.0"
__all__ = ["Box", "Composite", "Entity", "compose_first_frame", "TRIGGER", "WAN_NEGATIVE_PROMPT", "FFGoVideo",
           "generate", "with_trigger", "ModelNotAvailableError", "list_backbones", "load_pipeline"]
