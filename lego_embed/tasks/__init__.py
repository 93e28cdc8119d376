"""Tasks built on the generic NPC layer (`lego_embed.npc`): each owns its state schema, prompt,
expert policy and evaluation, and talks to the runtime only through prompts and output specs."""
