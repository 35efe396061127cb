"""SpriteWorld: a procedural video world with per-pixel ground truth, and the small Wan I2V model pretrained on it."""
from .world import (COLOURS, MOTIONS, SCENES, SHAPES, TEXTURES, Clip, SpriteSpec, WorldConfig, caption_for,
                    generate_clip, render_scene, render_sprite)

__all__ = ["COLOURS", "MOTIONS", "SCENES", "SHAPES", "TEXTURES", "Clip", "SpriteSpec", "WorldConfig", "caption_for",
           "generate_clip", "render_scene", "render_sprite"]
