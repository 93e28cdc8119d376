"""Benchmarks: co-location of a replayed game and the runtime (one run, the repeated matrix,
hitches, fill metrics, the oracle policy, plots), the headroom predictor, the machine's
measured state, and the prepared GPU check (device record, Llama-3-8B-scale profile, roofline
floors)."""
