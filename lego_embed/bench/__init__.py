"""Benchmarks: the prepared GPU check (device record, Llama-3-8B-scale profile, roofline floors,
GPU co-location)."""
