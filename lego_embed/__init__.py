"""lego_embed: run an LLM for game NPCs in the render gaps of the player's GPU (LEGO, HPCA 2026)."""

__version__ = "0.1.0"
