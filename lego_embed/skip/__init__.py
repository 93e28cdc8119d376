"""Resource-oriented layer skipping (LEGO): similarity map, span choice, distilled adaptors,
SkipBundle (the levels the scheduler picks from) and their evaluation against other skipping
methods. `SkipBundle.load(path).plan(level)` is the executor's LayerPlan for a level."""
